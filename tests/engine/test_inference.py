"""infer(): whole image, sliding window, PyTorch-Encoding's multi-scale procedure, flip, batching.

The merge against the reference's own code semantics (many classes, encnet_tiny, the reference's
metrics, optionally torch-encoding's source itself) is in test_reference_protocol.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from encnet_core.engine.inference import InferenceConfig, InferenceRequest, infer, parse_scales, window_starts
from encnet_core.errors import ConfigError

C = 4


def ones_model(x: Tensor) -> Tensor:
    return torch.ones(x.shape[0], C, *x.shape[-2:])


def pixelwise_model() -> torch.nn.Module:
    """A fixed random 1x1 conv plus a nonlinearity: translation-equivariant, any input size."""
    gen = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(3, C, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(C, 3, 1, 1, generator=gen))
        conv.bias.copy_(torch.randn(C, generator=gen))
    return torch.nn.Sequential(conv, torch.nn.Tanh(), torch.nn.Conv2d(C, C, 1)).eval()


def windowed_model() -> torch.nn.Module:
    """3x3 convs with zero padding plus a ramp in window coordinates: sees borders, padding and position."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            gen = torch.Generator().manual_seed(2)
            self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(6, C, 3, padding=1)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

        def forward(self, x: Tensor) -> Tensor:
            h, w = x.shape[-2:]
            ramp = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w) / w - torch.arange(h, dtype=x.dtype).view(1, 1, h, 1) / h
            return self.conv2(torch.relu(self.conv1(x))) + ramp * torch.arange(1, C + 1, dtype=x.dtype).view(1, C, 1, 1)

    return Net().eval()


def image(h: int, w: int, seed: int = 0) -> Tensor:
    return torch.randn(3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- sliding


@pytest.mark.parametrize(
    ("h", "w", "stride_rate"),
    [(20, 50, 2 / 3), (32, 32, 2 / 3), (45, 70, 2 / 3), (33, 31, 0.5), (77, 40, 0.3), (32, 97, 1.0)],
)
def test_sliding_window_covers_every_pixel(h: int, w: int, stride_rate: float) -> None:
    config = InferenceConfig(slide=True, crop_size=32, stride_rate=stride_rate, merge="logits", batch_size=5)
    out = infer(ones_model, image(h, w), C, config)
    assert out.shape == (C, h, w)
    assert torch.equal(out, torch.ones(C, h, w))  # every count >= 1, overlaps averaged
    whole = infer(ones_model, image(h, w), C, InferenceConfig(merge="logits"))
    assert torch.equal(out, whole)


def test_window_starts_reference_grid() -> None:
    assert window_starts(32, 32, 21) == [0]
    assert window_starts(45, 32, 21) == [0, 21]  # 21 + 32 >= 45
    assert window_starts(97, 32, 32) == [0, 32, 64, 96]  # the last window is padded
    for length, crop, stride in [(33, 32, 1), (100, 32, 21), (64, 32, 16)]:
        starts = window_starts(length, crop, stride)
        assert starts[-1] + crop >= length and starts[-1] < length


@pytest.mark.parametrize("merge", ["prob", "logits", "reference"])
@pytest.mark.parametrize(("h", "w"), [(20, 50), (32, 32), (45, 70)])
def test_sliding_equals_whole_for_translation_equivariant_model(merge: str, h: int, w: int) -> None:
    model = pixelwise_model()
    img = image(h, w, seed=h)
    whole = infer(model, img, C, InferenceConfig(merge=merge))
    slid = infer(model, img, C, InferenceConfig(slide=True, crop_size=32, merge=merge, pad_value=(9.0, -9.0, 3.0)))
    torch.testing.assert_close(slid, whole, rtol=0, atol=1e-5)
    if merge == "prob":
        torch.testing.assert_close(whole, model(img[None])[0].softmax(0))
    elif merge == "reference":
        torch.testing.assert_close(whole, model(img[None])[0].exp())
    else:
        torch.testing.assert_close(whole, model(img[None])[0])


# ---------------------------------------------------------------------------------------------- flip


def ramp_model(x: Tensor) -> Tensor:
    """logits[c] = channel 0 of the input + (c - 1) * column index: flipping changes it in a known way."""
    n, _, h, w = x.shape
    cols = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w)
    return x[:, :1] + (torch.arange(C, dtype=x.dtype).view(1, C, 1, 1) - 1) * cols


def test_flip_whole_image_hand_computed() -> None:
    h, w = 5, 7
    img = image(h, w)
    cols = torch.arange(w, dtype=torch.float32)
    c = (torch.arange(C, dtype=torch.float32) - 1).view(C, 1, 1)
    plain = img[0] + c * cols  # (C, H, W)
    mirrored = img[0] + c * (w - 1 - cols)  # the flipped view's output, flipped back
    logits = infer(ramp_model, img, C, InferenceConfig(flip=True, merge="logits"))
    torch.testing.assert_close(logits, plain + mirrored)
    torch.testing.assert_close(logits, 2 * img[0] + c * (w - 1) * torch.ones(h, w))
    prob = infer(ramp_model, img, C, InferenceConfig(flip=True, merge="prob"))
    torch.testing.assert_close(prob, (plain.softmax(0) + mirrored.softmax(0)) / 2)
    reference = infer(ramp_model, img, C, InferenceConfig(flip=True, merge="reference"))
    torch.testing.assert_close(reference, (plain + mirrored).exp())  # the pair's logits summed, then exp
    # without flip the ramp stays
    torch.testing.assert_close(infer(ramp_model, img, C, InferenceConfig(merge="logits")), plain)


def test_flip_sliding_and_single_window_hand_computed() -> None:
    # one 32-px window over a 20 x 24 image padded to 32: the ramp runs over the padded window
    h, w, crop = 20, 24, 32
    img = image(h, w, seed=5)
    pad = (0.5, -1.0, 2.0)
    padded = torch.tensor(pad).view(3, 1, 1).expand(3, crop, crop).clone()
    padded[:, :h, :w] = img
    c = (torch.arange(C, dtype=torch.float32) - 1).view(C, 1, 1)
    cols = torch.arange(crop, dtype=torch.float32)
    plain = (padded[0] + c * cols)[:, :h, :w]
    mirrored = (padded[0] + c * (crop - 1 - cols))[:, :h, :w]
    config = InferenceConfig(slide=True, flip=True, crop_size=crop, merge="logits", pad_value=pad)
    torch.testing.assert_close(infer(ramp_model, img, C, config), plain + mirrored)
    config = InferenceConfig(slide=True, flip=True, crop_size=crop, merge="prob", pad_value=pad)
    torch.testing.assert_close(infer(ramp_model, img, C, config), (plain.softmax(0) + mirrored.softmax(0)) / 2)
    config = InferenceConfig(slide=True, flip=True, crop_size=crop, merge="reference", pad_value=pad)
    torch.testing.assert_close(infer(ramp_model, img, C, config), (plain + mirrored).exp())


@pytest.mark.parametrize("merge", ["prob", "logits", "reference"])
def test_flipped_windows_are_flipped_back(merge: str) -> None:
    # a per-pixel model commutes with flipping, so flip adds nothing (but a window left mirrored would)
    model = pixelwise_model()
    img = image(45, 70, seed=3)
    plain = infer(model, img, C, InferenceConfig(slide=True, crop_size=32, merge=merge))
    flipped = infer(model, img, C, InferenceConfig(slide=True, flip=True, crop_size=32, merge=merge))
    if merge == "reference":  # per window exp(l + l) = exp(l)^2
        torch.testing.assert_close(flipped, plain**2, rtol=1e-5, atol=0)
    else:
        torch.testing.assert_close(flipped, plain * (2 if merge == "logits" else 1), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- multi-scale


def reference_multi_eval(
    model, image: Tensor, nclass: int, scales, base_size: int, crop_size: int, flip: bool, pad_value, stride_rate=2 / 3,
    exp: bool = True,
) -> Tensor:  # fmt: skip
    """PyTorch-Encoding's MultiEvalModule.forward re-implemented (batch of one); ``exp=False`` leaves out
    module_inference's exponential (what ``merge="logits"`` computes, which is not the reference)."""
    up = {"mode": "bilinear", "align_corners": True}
    x = image[None]
    _, _, h, w = x.shape
    stride = int(crop_size * stride_rate)
    scores = torch.zeros(1, nclass, h, w)

    def pad_image(img: Tensor, size: int) -> Tensor:
        _, c, ih, iw = img.shape
        padh, padw = max(size - ih, 0), max(size - iw, 0)
        out = torch.empty(1, c, ih + padh, iw + padw)
        for i in range(c):
            out[:, i] = F.pad(img[:, i], (0, padw, 0, padh), value=pad_value[i])
        return out

    def module_inference(img: Tensor) -> Tensor:
        output = model(img)
        if flip:
            output = output + model(img.flip(3)).flip(3)
        return output.exp() if exp else output  # the reference: exp(logits + flipped logits)

    for scale in scales:
        long_size = int(math.ceil(base_size * scale))
        if h > w:
            height, width = long_size, int(1.0 * w * long_size / h + 0.5)
            short_size = width
        else:
            width, height = long_size, int(1.0 * h * long_size / w + 0.5)
            short_size = height
        cur_img = F.interpolate(x, (height, width), **up)
        if long_size <= crop_size:
            pad_img = pad_image(cur_img, crop_size)
            outputs = module_inference(pad_img)[:, :, :height, :width]
        else:
            pad_img = pad_image(cur_img, crop_size) if short_size < crop_size else cur_img
            _, _, ph, pw = pad_img.shape
            h_grids = int(math.ceil(1.0 * (ph - crop_size) / stride)) + 1
            w_grids = int(math.ceil(1.0 * (pw - crop_size) / stride)) + 1
            outputs = torch.zeros(1, nclass, ph, pw)
            count_norm = torch.zeros(1, 1, ph, pw)
            for idh in range(h_grids):
                for idw in range(w_grids):
                    h0, w0 = idh * stride, idw * stride
                    h1, w1 = min(h0 + crop_size, ph), min(w0 + crop_size, pw)
                    crop_img = pad_img[:, :, h0:h1, w0:w1]
                    output = module_inference(pad_image(crop_img, crop_size))
                    outputs[:, :, h0:h1, w0:w1] += output[:, :, 0 : h1 - h0, 0 : w1 - w0]
                    count_norm[:, :, h0:h1, w0:w1] += 1
            assert (count_norm == 0).sum() == 0
            outputs = (outputs / count_norm)[:, :, :height, :width]
        scores += F.interpolate(outputs, (h, w), **up)
    return scores[0]


MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
PAD = (-2.1, -2.0, -1.8)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(("h", "w"), [(30, 41), (41, 30)])  # short sides round up at scale 1.5
def test_multi_scale_reference_equals_multi_eval_module(flip: bool, h: int, w: int) -> None:
    # base 40, crop 32: long sides 20, 30 (pad, run once), 40, 50, 60, 70 (slide; at 40 the short side 29 is padded)
    model = windowed_model()
    img = image(h, w, seed=11)
    config = InferenceConfig(
        scales=MS_SCALES, flip=flip, crop_size=32, base_size=40, merge="reference", batch_size=8, pad_value=PAD
    )
    with torch.no_grad():
        expected = reference_multi_eval(model, img, C, MS_SCALES, 40, 32, flip, PAD)
        got = infer(model, img, C, config)
        without_exp = reference_multi_eval(model, img, C, MS_SCALES, 40, 32, flip, PAD, exp=False)
        logits = infer(model, img, C, InferenceConfig(**{**config.__dict__, "merge": "logits"}))
    assert got.shape == (C, h, w)
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=0)
    # merge="logits" is the same procedure without the exponential, and that is not the reference
    torch.testing.assert_close(logits, without_exp, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits, expected, rtol=0.1) and not torch.allclose(logits.exp(), expected, rtol=0.1)


def test_multi_scale_prob_averages_softmax_and_counts_every_pixel() -> None:
    out = infer(ones_model, image(30, 41), C, InferenceConfig(scales=MS_SCALES, flip=True, crop_size=32, base_size=40))
    torch.testing.assert_close(out, torch.full((C, 30, 41), 1 / C))
    out = infer(ones_model, image(30, 41), C, InferenceConfig(scales=MS_SCALES, flip=True, crop_size=32, base_size=40, merge="logits"))
    torch.testing.assert_close(out, torch.full((C, 30, 41), 2.0 * len(MS_SCALES)))
    out = infer(ones_model, image(30, 41), C, InferenceConfig(scales=MS_SCALES, flip=True, crop_size=32, base_size=40, merge="reference"))
    torch.testing.assert_close(out, torch.full((C, 30, 41), math.exp(2.0) * len(MS_SCALES)))  # windows averaged, scales summed


# ---------------------------------------------------------------------------------------------- batching


class Counting:
    def __init__(self, model) -> None:
        self.model, self.calls, self.views, self.sizes = model, 0, 0, []

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.views += x.shape[0]
        self.sizes.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize("merge", ["prob", "logits", "reference"])
def test_views_are_batched_and_results_independent_of_batch_size(merge: str) -> None:
    model = windowed_model()
    img = image(30, 41, seed=4)
    results, counters = {}, {}
    for batch_size in (1, 3, 4, 64):
        counter = Counting(model)
        config = InferenceConfig(scales=MS_SCALES, flip=True, crop_size=32, base_size=40, merge=merge, batch_size=batch_size)
        with torch.no_grad():
            results[batch_size] = infer(counter, img, C, config)
        counters[batch_size] = counter
    views = counters[1].views
    assert counters[1].calls == views  # one view per call
    # long sides 20, 30: one padded window each; 40 (29 x 40): 1x2; 50 (37 x 50): 2x2; 60 (44 x 60): 2x3;
    # 70 (51 x 70): 2x3 windows -> 20 views, 40 with flips
    assert views == 40
    for batch_size in (3, 4, 64):
        counter = counters[batch_size]
        assert counter.views == views
        assert counter.calls == math.ceil(views / batch_size), (batch_size, counter.sizes)
        assert max(counter.sizes) <= batch_size
        torch.testing.assert_close(results[batch_size], results[1], rtol=2e-5, atol=2e-5)


def test_whole_image_flip_is_one_call() -> None:
    counter = Counting(ones_model)
    infer(counter, image(9, 9), C, InferenceConfig(flip=True))
    assert counter.calls == 1 and counter.views == 2


# ---------------------------------------------------------------------------------------------- config


def test_parse_scales_and_config_errors() -> None:
    assert parse_scales("0.5, 0.75,1") == (0.5, 0.75, 1.0)
    assert parse_scales(None) is None and parse_scales("") is None
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_scales("0.5,big")
    with pytest.raises(ConfigError, match="positive"):
        InferenceConfig(scales=(0.5, 0.0))
    with pytest.raises(ConfigError, match="merge"):
        InferenceConfig(merge="mean")
    with pytest.raises(ConfigError, match="stride-rate"):
        InferenceConfig(stride_rate=0.0)
    with pytest.raises(ConfigError, match="base-size"):
        InferenceConfig(scales=(1.0,), base_size=-5)  # was a RuntimeError from F.interpolate deep in infer()


def test_inference_request_takes_the_model_sizes_it_was_not_given_and_checks_late() -> None:
    """The options as a command takes them: crop/base size None are the model's, nothing is checked until then."""
    request = InferenceRequest(scales="0.5,1", flip=True, base_size=300, merge="reference", batch_size=2)
    assert request.config(96, 128) == InferenceConfig(
        scales=(0.5, 1.0), flip=True, crop_size=96, base_size=300, merge="reference", batch_size=2
    )
    assert InferenceRequest().config(64, 80) == InferenceConfig(crop_size=64, base_size=80)
    bad = InferenceRequest(scales="big")  # made without complaint: the model's file is read first
    with pytest.raises(ConfigError, match="--scales must be comma-separated numbers"):
        bad.config(64, 80)


def test_predict_refuses_the_options_of_the_other_task_in_one_line() -> None:
    from encnet_core.engine.predict import check_task_options

    check_task_options("segmentation", {"--alpha", "--scales"})
    check_task_options("classification", {"--top-k"})
    with pytest.raises(ConfigError, match=r"^--format, --alpha do not apply to a classification model .*; drop them$"):
        check_task_options("classification", {"--alpha", "--format", "--top-k"})
    with pytest.raises(ConfigError, match=r"^--top-k does not apply to a segmentation model \(it is for classifiers\); drop it$"):
        check_task_options("segmentation", {"--top-k"})
