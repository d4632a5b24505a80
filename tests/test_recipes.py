"""The shipped recipes of the reference's published models: each one's settings against the reference's
documented training command, typed in here (not read from encnet's own tables), and each one resolves and
builds its model the way `encnet train --recipe NAME` does."""

from __future__ import annotations

import pytest
import torch

from encnet_core.config import list_recipes, resolve_train_config
from encnet_core.engine.segmentation import SegmentationTask
from encnet_core.weights import zoo

# PyTorch-Encoding docs/source/model_zoo/segmentation.rst (commit ac748410) documents each command; what it
# leaves out is experiments/segmentation/train.py's default: ADE20K 180 epochs and lr 0.004 per 16 images,
# PASCAL Context 80 epochs and lr 0.001, batch 16, base 520, crop 480, aux weight 0.2 (SE weight 0.2).
# name: (model, epochs, lr per 16 images, crop, base, aux, se_loss, published pixAcc / mIoU in %, or None)
REFERENCE = {
    # cmd_fcn50_ade: train.py --dataset ADE20K --model FCN (the published weights hold an aux head)
    "ade20k_fcn_resnet50s": ("fcn_resnet50s", 180, 0.004, 480, 520, True, False, (78.7, 38.5)),
    # cmd_fcn_nest50_ade: train.py --dataset ADE20K --model fcn --aux --backbone resnest50
    "ade20k_fcn_resnest50": ("fcn_resnest50", 180, 0.004, 480, 520, True, False, (80.18, 42.94)),
    # cmd_enc_nest50_ade: train.py --dataset ADE20K --model EncNet --aux --se-loss --backbone resnest50
    "ade20k_encnet_resnest50": ("encnet_resnest50", 180, 0.004, 480, 520, True, True, None),
    # no documented command: cmd_enc_nest50_ade with --backbone resnest101
    "ade20k_encnet_resnest101": ("encnet_resnest101", 180, 0.004, 480, 520, True, True, None),
    # cmd_deeplab_resnest{50,101,200,269}_ade: --model deeplab --aux --backbone resnestN [--epochs 180]
    "ade20k_deeplab_resnest50": ("deeplab_resnest50", 180, 0.004, 480, 520, True, False, (81.17, 45.12)),
    "ade20k_deeplab_resnest101": ("deeplab_resnest101", 180, 0.004, 480, 520, True, False, (82.07, 46.91)),
    "ade20k_deeplab_resnest200": ("deeplab_resnest200", 180, 0.004, 480, 520, True, False, (82.45, 48.36)),
    "ade20k_deeplab_resnest269": ("deeplab_resnest269", 180, 0.004, 480, 520, True, False, (82.62, 47.60)),
    # cmd_fcn_nest50_pcont / cmd_deeplab_nest{50,101,200,269}_pcont: --dataset pcontext --model fcn|deeplab --aux
    "pcontext_fcn_resnest50": ("fcn_resnest50", 80, 0.001, 480, 520, True, False, (79.19, 51.98)),
    "pcontext_deeplab_resnest50": ("deeplab_resnest50", 80, 0.001, 480, 520, True, False, (80.41, 53.19)),
    "pcontext_deeplab_resnest101": ("deeplab_resnest101", 80, 0.001, 480, 520, True, False, (81.91, 56.49)),
    "pcontext_deeplab_resnest200": ("deeplab_resnest200", 80, 0.001, 480, 520, True, False, (82.50, 58.37)),
    "pcontext_deeplab_resnest269": ("deeplab_resnest269", 80, 0.001, 480, 520, True, False, (83.06, 58.92)),
    # no documented command: train.py --dataset citys --model EncNet --aux --se-loss --backbone resnet101 with
    # train.py's citys epochs/lr (:110, :120) and the author's sizes for Cityscapes (issue #186: base 2048, crop 768)
    "cityscapes_encnet_resnet101s": ("encnet_resnet101s", 240, 0.004, 768, 2048, True, True, None),
}
NUM_CLASSES = {"ade20k": 150, "pcontext": 59, "cityscapes": 19}


def test_every_reference_recipe_is_shipped() -> None:
    assert set(REFERENCE) <= set(list_recipes())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_recipe_is_the_reference_command(name: str) -> None:
    model, epochs, lr, crop, base, aux, se_loss, _ = REFERENCE[name]
    config = resolve_train_config("data.h5", recipe=name)
    assert (config.model, config.epochs, config.iters) == (model, epochs, None)
    assert (config.lr, config.crop_size, config.base_size) == (lr, crop, base)
    assert (config.aux, config.aux_weight, config.se_loss) == (aux, 0.2, se_loss)
    # 8 processes x batch = the reference's 16 images per step, so the lr is used as given
    assert config.batch_size * 8 == 16
    # the reference's poly schedule, SGD, 10x heads, random scale 0.5..2 of the base size, output stride 8
    assert (config.lr_schedule, config.poly_power, config.momentum) == ("poly", 0.9, 0.9)
    assert (config.weight_decay, config.head_lr_mult, config.output_stride) == (1e-4, 10.0, 8)
    assert (config.scale_min, config.scale_max) == (0.5, 2.0)
    assert config.lateral is False and config.recipe == name
    if se_loss:
        assert config.se_weight == 0.2


@pytest.mark.parametrize("name", sorted(n for n, facts in REFERENCE.items() if facts[-1]))
def test_recipe_trains_the_published_model(name: str) -> None:
    """The zoo entry of the same name (the recipe name with the dataset moved to the end) is this model."""
    dataset, _, rest = name.partition("_")
    entry = zoo.get(f"{rest}_{'ade' if dataset == 'ade20k' else 'pcontext'}")
    model, *_, published = REFERENCE[name]
    config = resolve_train_config("data.h5", recipe=name)
    assert entry is not None and entry.dataset == dataset and entry.model == config.model == model
    assert (entry.crop_size, entry.base_size) == (config.crop_size, config.base_size)
    assert (round(entry.pixacc * 100, 2), round(entry.miou * 100, 2)) == published


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_recipe_builds_its_model_as_train_does(name: str) -> None:
    """SegmentationTask.build_model with the recipe's settings (on the meta device: no memory, no time):
    no option the head lacks reaches it, and the heads are the ones the recipe asks for."""
    config = resolve_train_config("data.h5", recipe=name)
    num_classes = NUM_CLASSES[name.partition("_")[0]]
    with torch.device("meta"):
        model = SegmentationTask().build_model(config, num_classes)
    head = config.model.partition("_")[0]
    assert model.head_type == {"encnet": "enc", "fcn": "fcn", "deeplab": "deeplab"}[head]
    assert (model.aux_head is not None) == config.aux
    assert model.has_se is (head == "encnet")


# The paper's VOC pipeline, docs/source/model_zoo/segmentation.rst cmd_enc101_voc: COCO pre-training, then
# --dataset Pascal_aug --lr 0.001 --ft from the COCO model, then --dataset Pascal_voc --lr 0.0001 --ft from
# that; the epochs and lrs not on the command lines are train.py's defaults (coco 30 / 0.004, pascal_aug
# 80 / 0.001, pascal_voc 50 / 0.0001). Every stage: --aux --se-loss, base 520, crop 480, 16 images per step.
VOC_PIPELINE = {"coco_encnet_resnet101s": (30, 0.004), "voc_aug_resnet101s": (80, 0.001),
                "voc_finetune_resnet101s": (50, 0.0001)}  # fmt: skip


@pytest.mark.parametrize("name", sorted(VOC_PIPELINE))
def test_voc_pipeline_recipes_are_the_reference_defaults(name: str) -> None:
    config = resolve_train_config("data.h5", recipe=name)
    assert (config.model, config.epochs, config.lr) == ("encnet_resnet101s", *VOC_PIPELINE[name])
    assert (config.crop_size, config.base_size, config.batch_size * 8) == (480, 520, 16)
    assert (config.aux, config.aux_weight, config.se_loss, config.se_weight) == (True, 0.2, True, 0.2)


def test_voc_pipeline_stages_share_one_architecture() -> None:
    """Each stage's best.pt is the next one's --init-from: the same model, lateral included, 21 classes."""
    keys = []
    for name in VOC_PIPELINE:
        config = resolve_train_config("data.h5", recipe=name)
        assert config.lateral is True
        with torch.device("meta"):
            model = SegmentationTask().build_model(config, 21)
        keys.append({k: tuple(v.shape) for k, v in model.state_dict().items()})
    assert keys[0] == keys[1] == keys[2]
