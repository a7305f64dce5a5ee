"""The ImageNet EfficientNet-Lite0 backbone (dynrcnn/modeling/efficientnet.py): the installed weights
mapped onto timm's network classify photos scikit-image ships as ImageNet does, the file is checked
by its SHA-256, and the FPN backbone and the detector built on it have the expected shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dynrcnn.errors import CheckpointError
from dynrcnn.modeling import efficientnet as eff
from dynrcnn.presets import build_config

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def classifier():
    return eff.efficientnet_lite0(pretrained=True)


def _input(photo: np.ndarray) -> torch.Tensor:
    """The whole photo resized to 224 x 224 (bilinear), as (x - 127) / 128."""
    pixels = np.array(Image.fromarray(photo).resize((224, 224), Image.BILINEAR), dtype=np.float32)
    return ((torch.from_numpy(pixels).permute(2, 0, 1) - 127) / 128)[None]


# the photo, its ImageNet top-1 class (index, name) and the least probability it gets
# (measured: 0.79 and 0.90 on the weights of record)
PHOTOS = [("chelsea", 285, "Egyptian cat", 0.6), ("coffee", 967, "espresso", 0.8)]


@pytest.mark.parametrize("photo, index, name, least", PHOTOS)
def test_imagenet_weights_classify_bundled_photos(classifier, photo, index, name, least):
    with torch.no_grad():
        p = classifier(_input(getattr(skimage_data, photo)())).softmax(-1)[0]
    assert int(p.argmax()) == index, (photo, name, p.topk(3))
    assert float(p[index]) > least


def test_every_entry_is_mapped_onto_timm_names():
    assert eff.timm_key("_conv_stem.weight") == "conv_stem.weight"
    assert eff.timm_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert eff.timm_key("_blocks.3._bn0.running_mean") == "blocks.2.0.bn1.running_mean"
    assert eff.timm_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert eff.timm_key("_fc.bias") == "classifier.bias"
    with pytest.raises(KeyError):
        eff.timm_key("_blocks.16._bn0.weight")


def test_weights_with_another_checksum_are_refused(tmp_path):
    path = tmp_path / eff.WEIGHTS_FILE
    torch.save({"_fc.bias": torch.zeros(1000)}, path)
    with pytest.raises(CheckpointError, match="not the pinned 579344248a93"):
        eff.imagenet_state(path)


def test_fpn_backbone_levels_and_frozen_groups():
    backbone = eff.efficientnet_fpn(32, pretrained=True, trainable_layers=2)
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, 128, 160))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
    trainable = {n.split(".")[2] for n, p in backbone.named_parameters() if p.requires_grad and n.startswith("body.")}
    assert trainable == {"3", "4", "5", "6"}  # the stride-16 and stride-32 stages
    assert not any("running_mean" in n for n, _ in backbone.named_parameters())
    frozen = [m for m in backbone.modules() if type(m).__name__.startswith("FrozenBatchNorm")]
    assert frozen and not [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_detector_trains_and_predicts_on_the_efficientnet_backbone():
    cfg = build_config("mini_smoke", "dynamic", overrides=["model.arch=efficientnet_lite0_fpn",
                                                           "model.pretrained_backbone=true"])
    from dynrcnn.modeling.model import build_model

    torch.manual_seed(0)
    model = build_model(cfg, num_classes=2)
    assert model.transform.image_mean == list(eff.IMAGE_MEAN)
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    losses = model(images, targets)
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness"}
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        assert set(model(images)[0]) == {"boxes", "labels", "scores"}
