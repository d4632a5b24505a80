"""``merge="reference"`` and ``--protocol reference`` against PyTorch-Encoding's evaluation, re-implemented here.

``multi_eval_module`` below is a line-by-line transcription of the reference's ``MultiEvalModule.forward``
and of ``module_inference``, ``resize_image``, ``pad_image``, ``crop_image`` and ``flip_image``
(``encoding/models/sseg/base.py``, identical in PyTorch-Encoding 1.2.1 and at commit ac748410), and
``reference_metrics`` of ``batch_pix_accuracy``, ``batch_intersection_union`` and
``get_pixacc_miou`` (``encoding/utils/metrics.py``). Nothing in them comes from encnet.

With ``ENCNET_TORCH_ENCODING`` set to the path of ``torch_encoding-1.2.1-py2.py3-none-any.whl`` (or an
unpacked copy of it; ``pip download --no-deps torch-encoding==1.2.1``), ``test_against_torch_encoding_itself``
also runs the reference's own ``MultiEvalModule`` source from that file (its compiled kernels are not
needed for it) against encnet's ``infer``.
"""

from __future__ import annotations

import ast
import math
import os
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encnet_core.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from encnet_core.engine.inference import InferenceConfig, infer
from encnet_core.engine.metrics import ConfusionMatrix, metrics_from_confusion
from encnet_core.models.registry import create_model
from encnet_core.weights.model_files import LoadedModel

NCLASS = 29
SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


# ------------------------------------------------------------------------ the reference, transcribed


class ReferenceModule:
    """What MultiEvalModule reads from its module: base/crop size, mean/std, _up_kwargs, evaluate()."""

    def __init__(self, net, base_size: int, crop_size: int) -> None:
        self.net, self.base_size, self.crop_size = net, base_size, crop_size
        self.mean, self.std = list(IMAGENET_MEAN), list(IMAGENET_STD)  # BaseNet's defaults
        self._up_kwargs = {"mode": "bilinear", "align_corners": True}

    def evaluate(self, x: Tensor) -> Tensor:  # BaseNet.evaluate without a target: forward()'s first output
        return self.net(x)


def resize_image(img, h, w, **up_kwargs):
    return F.interpolate(img, (h, w), **up_kwargs)


def pad_image(img, mean, std, crop_size):
    b, c, h, w = img.size()
    assert c == 3
    padh = crop_size - h if h < crop_size else 0
    padw = crop_size - w if w < crop_size else 0
    pad_values = -np.array(mean) / np.array(std)
    img_pad = img.new().resize_(b, c, h + padh, w + padw)
    for i in range(c):
        img_pad[:, i, :, :] = F.pad(img[:, i, :, :], (0, padw, 0, padh), value=pad_values[i])
    assert img_pad.size(2) >= crop_size and img_pad.size(3) >= crop_size
    return img_pad


def crop_image(img, h0, h1, w0, w1):
    return img[:, :, h0:h1, w0:w1]


def flip_image(img):
    assert img.dim() == 4
    idx = torch.arange(img.size(3) - 1, -1, -1).type_as(img).long()
    return img.index_select(3, idx)


def module_inference(module, image, flip=True):
    output = module.evaluate(image)
    if flip:
        fimg = flip_image(image)
        foutput = module.evaluate(fimg)
        output += flip_image(foutput)
    return output.exp()


def multi_eval_module(module: ReferenceModule, nclass: int, image: Tensor, scales, flip: bool = True) -> Tensor:
    """MultiEvalModule(module, nclass, flip=flip, scales=scales).forward(image), image (1, 3, h, w)."""
    batch, _, h, w = image.size()
    assert batch == 1
    stride_rate = 2.0 / 3.0
    crop_size = module.crop_size
    stride = int(crop_size * stride_rate)
    scores = image.new().resize_(batch, nclass, h, w).zero_()
    for scale in scales:
        long_size = int(math.ceil(module.base_size * scale))
        if h > w:
            height = long_size
            width = int(1.0 * w * long_size / h + 0.5)
            short_size = width
        else:
            width = long_size
            height = int(1.0 * h * long_size / w + 0.5)
            short_size = height
        cur_img = resize_image(image, height, width, **module._up_kwargs)
        if long_size <= crop_size:
            pad_img = pad_image(cur_img, module.mean, module.std, crop_size)
            outputs = module_inference(module, pad_img, flip)
            outputs = crop_image(outputs, 0, height, 0, width)
        else:
            if short_size < crop_size:
                pad_img = pad_image(cur_img, module.mean, module.std, crop_size)
            else:
                pad_img = cur_img
            _, _, ph, pw = pad_img.size()
            assert ph >= height and pw >= width
            h_grids = int(math.ceil(1.0 * (ph - crop_size) / stride)) + 1
            w_grids = int(math.ceil(1.0 * (pw - crop_size) / stride)) + 1
            outputs = image.new().resize_(batch, nclass, ph, pw).zero_()
            count_norm = image.new().resize_(batch, 1, ph, pw).zero_()
            for idh in range(h_grids):
                for idw in range(w_grids):
                    h0 = idh * stride
                    w0 = idw * stride
                    h1 = min(h0 + crop_size, ph)
                    w1 = min(w0 + crop_size, pw)
                    crop_img = crop_image(pad_img, h0, h1, w0, w1)
                    pad_crop_img = pad_image(crop_img, module.mean, module.std, crop_size)
                    output = module_inference(module, pad_crop_img, flip)
                    outputs[:, :, h0:h1, w0:w1] += crop_image(output, 0, h1 - h0, 0, w1 - w0)
                    count_norm[:, :, h0:h1, w0:w1] += 1
            assert (count_norm == 0).sum() == 0
            outputs = outputs / count_norm
            outputs = outputs[:, :, :height, :width]
        score = resize_image(outputs, h, w, **module._up_kwargs)
        scores += score
    return scores


def reference_metrics(outputs: list[Tensor], targets: list[Tensor], nclass: int) -> tuple[float, float]:
    """SegmentationMetric.update over (1, C, H, W) scores and (1, H, W) targets (-1: ignore), then .get()."""
    total_correct = total_label = total_inter = total_union = 0
    for output, target in zip(outputs, targets, strict=True):
        _, predict = torch.max(output, 1)
        predict = predict.cpu().numpy().astype("int64") + 1
        target = target.cpu().numpy().astype("int64") + 1
        total_label += np.sum(target > 0)
        total_correct += np.sum((predict == target) * (target > 0))
        predict = predict * (target > 0).astype(predict.dtype)
        intersection = predict * (predict == target)
        area_inter, _ = np.histogram(intersection, bins=nclass, range=(1, nclass))
        area_pred, _ = np.histogram(predict, bins=nclass, range=(1, nclass))
        area_lab, _ = np.histogram(target, bins=nclass, range=(1, nclass))
        total_inter += area_inter
        total_union += area_pred + area_lab - area_inter
    pix_acc = 1.0 * total_correct / (np.spacing(1) + total_label)
    iou = 1.0 * total_inter / (np.spacing(1) + total_union)
    return float(pix_acc), float(iou.mean())


# ------------------------------------------------------------------------ models and inputs


class ManyClassNet(nn.Module):
    """29 classes from 3x3 convs (zero padding: sees window borders and the padding), a window-global
    context term (like the Encoding layer: every pixel depends on the whole window) and a position
    ramp; logits of a few units, so the exponential matters and does not overflow."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, NCLASS, 3, padding=1)
        self.context = nn.Linear(16, NCLASS)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.6)
            self.ramp = torch.randn(NCLASS, generator=gen).view(1, NCLASS, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        feat = torch.relu(self.conv1(x))  # (N, 16, h, w)
        pos = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w) / w + torch.arange(h, dtype=x.dtype).view(1, 1, h, 1) / h
        logits = self.conv2(feat) + self.context(feat.mean((2, 3)))[:, :, None, None] + self.ramp * pos
        return 0.15 * logits  # (N, 29, h, w), std about 3


def encnet_tiny() -> nn.Module:
    torch.manual_seed(3)
    model = create_model("encnet_tiny", NCLASS).eval()

    def forward(x: Tensor) -> Tensor:  # random weights: logits of std 0.25, one class nearly everywhere;
        out = model(x)["out"]  # centred per window and scaled, several classes with a trained model's range
        return 25 * (out - out.mean((2, 3), keepdim=True))

    return forward


def black_pad() -> tuple[float, float, float]:
    """encnet's models' pad_value (LoadedModel.pad_value), from the ImageNet mean/std."""
    return LoadedModel.pad_value.fget(types.SimpleNamespace(mean=IMAGENET_MEAN, std=IMAGENET_STD))


def normalised_image(h: int, w: int, seed: int) -> Tensor:
    rgb = torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))
    return (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def compare(got: Tensor, expected: Tensor) -> tuple[float, float, float]:
    """(max abs difference, max relative difference, share of pixels whose argmax agrees)."""
    diff = (got - expected).abs()
    rel = (diff / expected.abs().clamp_min(1e-30)).max().item()
    agree = (got.argmax(0) == expected.argmax(0)).double().mean().item()
    return diff.max().item(), rel, agree


# ------------------------------------------------------------------------ tests


def test_pad_value_is_the_references_black() -> None:
    # pad_image fills with -mean/std computed in float64 (numpy), cast to the image's float32
    reference = torch.tensor(-np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD), dtype=torch.float32)
    assert torch.equal(torch.tensor(black_pad(), dtype=torch.float32), reference)


# base 48, crop 32, stride 21: long sides 24 (padded, run once), 36 (slid, short side padded when < 32),
# 48, 60, 72, 84 (slid over 2..4 x 2..4 windows; edge windows padded); odd image sides both ways
CASES = [(37, 53, True), (53, 37, True), (45, 45, True), (37, 53, False), (31, 64, True)]


@pytest.mark.parametrize("make_model", [ManyClassNet, encnet_tiny], ids=["many-class-net", "encnet_tiny"])
@pytest.mark.parametrize(("h", "w", "flip"), CASES)
def test_reference_merge_equals_multi_eval_module(make_model, h: int, w: int, flip: bool) -> None:
    net = make_model()
    image = normalised_image(h, w, seed=h * 100 + w)
    module = ReferenceModule(net, base_size=48, crop_size=32)
    config = InferenceConfig(scales=SCALES, flip=flip, crop_size=32, base_size=48, merge="reference", batch_size=7, pad_value=black_pad())
    with torch.no_grad():
        expected = multi_eval_module(module, NCLASS, image[None], SCALES, flip=flip)[0]
        got = infer(net, image, NCLASS, config)
        old = infer(net, image, NCLASS, InferenceConfig(**{**config.__dict__, "merge": "logits"}))
    assert got.shape == expected.shape == (NCLASS, h, w)
    assert torch.isfinite(expected).all() and expected.min() > 0
    abs_diff, rel_diff, agree = compare(got, expected)
    assert rel_diff < 5e-5, (abs_diff, rel_diff)  # float32 rounding (batched convolutions), through exp()
    assert agree >= 0.999, agree  # a near-tie may flip under rounding; none does here
    # the logits merge (the old claim) is not the reference: 100% relative off, argmax far apart
    _, old_rel, old_agree = compare(old, expected)
    assert old_rel > 0.5 and old_agree < 0.9, (old_rel, old_agree)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_reference_merge_pairs_flips_across_batches(batch_size: int) -> None:
    # a window and its flip may land in different batches (odd batch sizes): still exp(l + flipped l)
    net = ManyClassNet(seed=4)
    image = normalised_image(41, 58, seed=9)
    module = ReferenceModule(net, base_size=48, crop_size=32)
    config = InferenceConfig(scales=(0.75, 1.5), flip=True, crop_size=32, base_size=48, merge="reference", batch_size=batch_size, pad_value=black_pad())
    with torch.no_grad():
        expected = multi_eval_module(module, NCLASS, image[None], (0.75, 1.5))[0]
        got = infer(net, image, NCLASS, config)
    assert compare(got, expected)[1] < 5e-5


def test_reference_merge_whole_image_and_without_flip() -> None:
    net = ManyClassNet(seed=5)
    image = normalised_image(23, 30, seed=2)
    with torch.no_grad():
        logits, flipped = net(image[None])[0], net(image.flip(-1)[None])[0].flip(-1)
        plain = infer(net, image, NCLASS, InferenceConfig(merge="reference"))
        both = infer(net, image, NCLASS, InferenceConfig(merge="reference", flip=True))  # one batch of two views
    torch.testing.assert_close(plain, logits.exp(), rtol=2e-5, atol=0)
    torch.testing.assert_close(both, (logits + flipped).exp(), rtol=2e-5, atol=0)


def test_reference_metrics_are_encnets_pixacc_and_miou_all() -> None:
    # the reference's mIoU averages IoU over all classes (empty ones count 0): encnet's mIoU_all
    gen = torch.Generator().manual_seed(0)
    nclass, outputs, targets = 7, [], []
    confusion = ConfusionMatrix(nclass)
    for h, w in [(20, 31), (17, 17), (9, 40)]:
        scores = torch.randn(1, nclass, h, w, generator=gen)
        scores[:, 6] -= 100  # class 6 is never predicted
        target = torch.randint(0, nclass - 1, (1, h, w), generator=gen)  # nor labelled: its union is empty
        target[torch.rand(1, h, w, generator=gen) < 0.2] = IGNORE_INDEX
        confusion.update(scores.argmax(1)[0], target[0])
        outputs.append(scores)
        targets.append(torch.where(target == IGNORE_INDEX, -1, target))  # the reference's ignore label is -1
    pix_acc, miou = reference_metrics(outputs, targets, nclass)
    metrics = metrics_from_confusion(confusion.matrix)
    assert metrics["pixAcc"] == pytest.approx(pix_acc, rel=1e-12)
    assert metrics["mIoU_all"] == pytest.approx(miou, rel=1e-12)
    assert metrics["mIoU"] != pytest.approx(miou)  # the headline drops the empty class


# ------------------------------------------------------------------------ the reference's own code (optional)


def _reference_source(path: Path) -> str:
    member = "encoding/models/sseg/base.py"
    if path.is_dir():
        return (path / member).read_text()
    with zipfile.ZipFile(path) as archive:
        return archive.read(member).decode()


def _load_multi_eval(path: Path) -> dict:
    """MultiEvalModule and its helpers exec'd from the reference's base.py (imports given, no compiled code)."""
    tree = ast.parse(_reference_source(path))
    wanted = {"MultiEvalModule", "module_inference", "resize_image", "pad_image", "crop_image", "flip_image"}
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in wanted]
    assert {node.name for node in body} == wanted
    from torch.nn.parallel.data_parallel import DataParallel

    namespace = {"math": math, "np": np, "torch": torch, "nn": nn, "F": F, "DataParallel": DataParallel}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102 - test-only
    return namespace


@pytest.mark.skipif(not os.environ.get("ENCNET_TORCH_ENCODING"), reason="set ENCNET_TORCH_ENCODING to torch-encoding 1.2.1's wheel")
@pytest.mark.parametrize(("h", "w", "flip"), CASES)
def test_against_torch_encoding_itself(monkeypatch: pytest.MonkeyPatch, h: int, w: int, flip: bool) -> None:
    reference = _load_multi_eval(Path(os.environ["ENCNET_TORCH_ENCODING"]))
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)  # forward() calls .cuda()
    net = ManyClassNet(seed=7)
    module = ReferenceModule(net, base_size=48, crop_size=32)
    module = types.SimpleNamespace(**module.__dict__, evaluate=module.evaluate)
    evaluator = reference["MultiEvalModule"].__new__(reference["MultiEvalModule"])
    nn.Module.__init__(evaluator)  # DataParallel's __init__ wants a GPU or none; forward() reads only these
    evaluator.__dict__.update(module=module, nclass=NCLASS, base_size=48, crop_size=32, scales=list(SCALES), flip=flip)
    image = normalised_image(h, w, seed=h * 100 + w)
    config = InferenceConfig(scales=SCALES, flip=flip, crop_size=32, base_size=48, merge="reference", batch_size=7, pad_value=black_pad())
    with torch.no_grad():
        expected = evaluator.forward(image[None])[0]
        got = infer(net, image, NCLASS, config)
        transcribed = multi_eval_module(ReferenceModule(net, 48, 32), NCLASS, image[None], SCALES, flip=flip)[0]
    assert torch.equal(transcribed, expected)  # the transcription is the reference, bit for bit
    _, rel_diff, agree = compare(got, expected)
    assert rel_diff < 5e-5 and agree >= 0.999, (rel_diff, agree)



# ------------------------------------------------------------------------ evaluate(protocol="reference")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(synthetic dataset: 6 val images at 48 px, encnet_tiny checkpoint after 2 iterations: base 48, crop 32)."""
    from helpers import make_synthetic, train_tiny

    folder = tmp_path_factory.mktemp("reference_protocol")
    data = make_synthetic(folder, 8, 6)
    torch.manual_seed(0)
    return data, train_tiny(data, folder)


def _val_split(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB (H, W, 3), labels (H, W)) decoded with PIL straight from the HDF5 file."""
    import io

    import h5py
    from PIL import Image

    with h5py.File(path, "r") as handle:
        group = handle["val"]
        return [
            (np.asarray(Image.open(io.BytesIO(group["images"][i].tobytes())).convert("RGB")),
             np.asarray(Image.open(io.BytesIO(group["masks"][i].tobytes()))))
            for i in range(group["names"].shape[0])
        ]  # fmt: skip


def test_evaluate_protocol_reference_equals_the_references_test_py(tiny: tuple[Path, Path]) -> None:
    # test.py --eval: MultiEvalModule(model, nclass, scales=0.5..1.75) with its flip, the model's
    # base/crop and black padding, on the full-size image (ToTensor + Normalize), then SegmentationMetric
    from encnet_core.engine.evaluate import EvaluateOptions, evaluate
    from encnet_core.weights.checkpoint import load_checkpoint, model_from_checkpoint

    data, checkpoint = tiny
    ckpt = load_checkpoint(checkpoint)
    net = model_from_checkpoint(ckpt).eval()
    module = ReferenceModule(lambda x: net(x)["out"], base_size=ckpt["base_size"], crop_size=ckpt["crop_size"])
    module.mean, module.std = list(ckpt["mean"]), list(ckpt["std"])
    assert (module.base_size, module.crop_size) == (48, 32)  # so 0.5 runs one padded window, 1.0+ slide
    outputs, targets = [], []
    for rgb, labels in _val_split(data):
        image = (torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255 - torch.tensor(module.mean).view(3, 1, 1)) / torch.tensor(module.std).view(3, 1, 1)
        with torch.no_grad():
            outputs.append(multi_eval_module(module, len(ckpt["classes"]), image[None], SCALES, flip=True))
        target = torch.from_numpy(labels.astype(np.int64))[None]
        targets.append(torch.where(target == IGNORE_INDEX, -1, target))
    pix_acc, miou = reference_metrics(outputs, targets, len(ckpt["classes"]))

    result = evaluate(checkpoint, data, EvaluateOptions(device="cpu", workers=0, protocol="reference"))
    assert result["inference"] == {
        "scales": list(SCALES), "slide": False, "flip": True, "merge": "reference",
        "crop_size": 32, "base_size": 48, "stride_rate": 2 / 3,
    }  # fmt: skip
    protocol = result["protocol"]
    assert protocol["miou_convention"] == "mIoU_all" and protocol["published"] is None
    assert protocol["dataset"] == "synthetic" and protocol["known_dataset"] is False
    assert protocol["pixAcc"] == pytest.approx(pix_acc, abs=1e-12) and protocol["mIoU"] == pytest.approx(miou, abs=1e-12)
    assert protocol["mIoU"] == result["mIoU_all"]
    # the old claim, --merge logits with the same settings, measures something else
    from dataclasses import replace

    from encnet_core.engine.inference import InferenceConfig as Config

    logits = evaluate(checkpoint, data, EvaluateOptions(device="cpu", workers=0, inference=replace(
        Config(**{**result["inference"], "scales": SCALES}), merge="logits", pad_value=black_pad())))  # fmt: skip
    assert logits["confusion_matrix"] != result["confusion_matrix"]


def test_protocol_table_and_overrides() -> None:
    from encnet_core.engine.evaluate import EvaluateOptions
    from encnet_core.engine.segmentation import PROTOCOLS, protocol_inference, reference_protocol
    from encnet_core.errors import ConfigError

    assert set(PROTOCOLS) == {"pcontext", "ade20k", "voc", "voc-aug", "cityscapes"}
    for protocol in [*PROTOCOLS.values(), reference_protocol("folder")]:
        # test.py:157: [0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25] if args.dataset == 'citys' else SCALES
        citys = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25)
        assert protocol.scales == (citys if protocol.dataset == "cityscapes" else SCALES)
        assert protocol.flip and protocol.merge == "reference"
        assert protocol.stride_rate == 2 / 3 and protocol.miou == "mIoU_all"
    given = InferenceConfig(scales=(1.0,), slide=True, flip=False, merge="prob", stride_rate=0.5, crop_size=64, base_size=80, batch_size=3, align_corners=False)
    model = types.SimpleNamespace(crop_size=576, base_size=640, pad_value=black_pad())  # as encnet_resnet101s_ade
    config = protocol_inference(given, PROTOCOLS["ade20k"], model)
    assert (config.scales, config.slide, config.flip, config.merge, config.stride_rate) == (SCALES, False, True, "reference", 2 / 3)
    assert (config.crop_size, config.base_size, config.batch_size, config.align_corners) == (576, 640, 3, True)
    assert config.pad_value == black_pad()
    with pytest.raises(ConfigError, match="--protocol"):
        EvaluateOptions(protocol="paper")
