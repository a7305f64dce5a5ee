"""Presets, --set overrides and the linear learning-rate scaling rule."""

import json

import pytest

from dynrcnn.config import Config, apply_overrides, config_from_dict, resolve_lr, scaled_lr, valid_keys
from dynrcnn.engine.trainer import lr_at
from dynrcnn.errors import ConfigError
from dynrcnn.presets import PRESET_HELP, PRESETS, build_config, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_and_validates(name):
    cfg = get_preset(name)
    cfg.validate()
    assert cfg.preset == name
    assert name in PRESET_HELP
    resolved, _ = resolve_lr(cfg)
    assert cfg.lr is None  # the caller's config is not modified
    assert resolved.lr == pytest.approx(scaled_lr(cfg.base_lr, cfg.ims_per_batch, cfg.reference_ims_per_batch))
    # JSON round trip (what config.json holds, with the engine's top-level extras)
    d = json.loads(cfg.to_json())
    d.update({"images_per_update": 1, "world_size": 1})
    assert config_from_dict(d) == cfg
    for m in ("baseline", "dla", "dsl", "dynamic"):
        cfg.method = m
        cfg.validate()


def test_presets_are_fresh_copies():
    a = get_preset("mini")
    a.dynamic.k_i = 999
    assert get_preset("mini").dynamic.k_i != 999


def test_paper_recipe():
    cfg = get_preset("coco_r50_fpn_1x")
    assert (cfg.ims_per_batch, cfg.base_lr, cfg.max_iter, tuple(cfg.lr_steps)) == (16, 0.02, 90000, (60000, 80000))
    assert (cfg.dynamic.k_i, cfg.dynamic.k_beta, cfg.dynamic.interval) == (75, 10, 100)
    assert cfg.warmup_iters == 500 and cfg.warmup_factor == pytest.approx(1 / 3)


def test_set_parsing_nested_tuples_bools():
    cfg = get_preset("mini")
    apply_overrides(cfg, ["max_iter=200", "dynamic.interval=20", "lr_steps=100,150", "log_stats=true",
                          "model.rpn_nms_thresh=0.85", "dynamic.convention=official", "base_lr=1e-3",
                          "eval_at_end=no", "model.anchor_sizes=(4,8,16,32,64)"])
    assert cfg.max_iter == 200 and isinstance(cfg.max_iter, int)
    assert cfg.dynamic.interval == 20
    assert cfg.lr_steps == (100, 150)
    assert cfg.log_stats is True and cfg.eval_at_end is False
    assert cfg.model.rpn_nms_thresh == 0.85
    assert cfg.dynamic.convention == "official"
    assert cfg.base_lr == pytest.approx(1e-3)
    assert cfg.model.anchor_sizes == (4, 8, 16, 32, 64)
    cfg.validate()


def test_unknown_key_refused_with_valid_list():
    with pytest.raises(ConfigError) as e:
        apply_overrides(get_preset("mini"), ["dynamic.kk=3"])
    msg = str(e.value)
    assert "dynamic.kk" in msg and "dynamic.k_i" in msg and "max_iter" in msg


@pytest.mark.parametrize("bad", ["max_iter", "log_stats=maybe", "max_iter=abc"])
def test_bad_values_refused(bad):
    with pytest.raises(ConfigError):
        apply_overrides(get_preset("mini"), [bad])


@pytest.mark.parametrize("item, expected", [("max_iter=ten", "expected an integer, got 'ten'"),
                                            ("max_iter=2.5", "expected an integer, got '2.5'"),
                                            ("lr=fast", "expected a number, got 'fast'")])
def test_bad_number_names_the_type_of_the_field(item, expected):
    with pytest.raises(ConfigError) as e:
        apply_overrides(get_preset("mini"), [item])
    assert str(e.value) == f"bad value for {item.split('=')[0]}: {expected}"
    assert apply_overrides(get_preset("mini"), ["max_iter=1e3"]).max_iter == 1000


def test_bad_convention_refused_by_validate():
    cfg = apply_overrides(get_preset("mini"), ["dynamic.convention=nope"])
    with pytest.raises(ConfigError):
        cfg.validate()


def test_issue_field_names_exist():
    keys = valid_keys()
    for k in ("max_iter", "ims_per_batch", "base_lr", "lr_steps", "warmup_iters", "checkpoint_period",
              "log_period", "log_stats", "eval_at_end", "dynamic.k_i", "dynamic.k_beta", "dynamic.interval",
              "dynamic.init_iou", "dynamic.init_beta", "dynamic.convention"):
        assert k in keys


def test_linear_lr_scaling():
    cfg = apply_overrides(get_preset("coco_r50_fpn_1x"), ["ims_per_batch=2"])
    cfg, msg = resolve_lr(cfg)
    assert cfg.lr == pytest.approx(0.0025)
    assert "0.02" in msg and "0.0025" in msg and "16" in msg and "2 img/iter" in msg
    assert scaled_lr(0.02, 8, 16) == pytest.approx(0.01)
    one = get_preset("coco_r50_fpn_1x_1gpu")
    assert resolve_lr(one)[0].lr == pytest.approx(0.0025)


def test_lr_schedule_warmup_and_steps():
    cfg = Config(base_lr=0.02, ims_per_batch=16, reference_ims_per_batch=16, warmup_iters=500,
                 warmup_factor=1 / 3, lr_steps=(60000, 80000), lr_gamma=0.1)
    cfg, _ = resolve_lr(cfg)
    assert lr_at(cfg, 0) == pytest.approx(0.02 / 3)
    assert lr_at(cfg, 250) == pytest.approx(0.02 * (1 / 3 * 0.5 + 0.5))
    assert lr_at(cfg, 500) == pytest.approx(0.02)
    assert lr_at(cfg, 59999) == pytest.approx(0.02)
    assert lr_at(cfg, 60000) == pytest.approx(0.002)
    assert lr_at(cfg, 80000) == pytest.approx(0.0002)


def test_build_config_is_the_one_assembly():
    cfg = build_config("mini", "dla", seed=3, data_root="data/x", overrides=["max_iter=7", "dynamic.k_i=5"],
                       convention="official")
    assert (cfg.preset, cfg.method, cfg.seed, cfg.data_root, cfg.max_iter) == ("mini", "dla", 3, "data/x", 7)
    assert (cfg.dynamic.k_i, cfg.dynamic.convention) == (5, "official")
    assert build_config("mini", "baseline").seed == get_preset("mini").seed
    with pytest.raises(ConfigError):
        build_config("mini", "nope")


def test_slim_r10_is_resnet18_with_one_block_per_stage():
    import torch

    from dynrcnn.modeling.model import build_model

    r18 = build_model(apply_overrides(get_preset("mini"), ["model.arch=slim_r18_fpn"]), 7).backbone.body
    r10 = build_model(apply_overrides(get_preset("mini"), ["model.arch=slim_r10_fpn"]), 7).backbone.body
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        assert (len(getattr(r18, stage)), len(getattr(r10, stage))) == (2, 1)
    x = torch.zeros(1, 3, 64, 64)
    assert [t.shape for t in r10(x).values()] == [t.shape for t in r18(x).values()]  # same FPN inputs
    with pytest.raises(ConfigError, match="no ImageNet|not for slim_r10_fpn"):
        apply_overrides(get_preset("mini"), ["model.arch=slim_r10_fpn", "model.pretrained_backbone=true"]).validate()


def test_each_preset_says_what_its_numbers_are():
    from dynrcnn.presets import scale_label, scale_of

    assert {name: scale_of(name) for name in PRESETS} == {
        "coco_r50_fpn_1x": "COCO", "coco_r50_fpn_1x_1gpu": "COCO", "coco_r50_fpn_2x": "COCO",
        "custom_r50_fpn": "own dataset", "mini": "miniature", "mini_long": "miniature", "mini_smoke": "miniature",
        "mini_pretrain": "miniature", "mini_pretrain_smoke": "miniature", "trees": "tree crowns"}
    # a run on the user's own data is never labelled as the miniature benchmark, nor compared as COCO
    assert scale_label("custom_r50_fpn") == "own dataset (not COCO)" and scale_label(None) == "miniature benchmark (not COCO)"
