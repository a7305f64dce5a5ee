"""The project's pretrained backbone: built once, checksummed, reused, loaded into fresh runs."""

import json

import pytest
import torch

from dynrcnn.errors import CheckpointError, ConfigError
from dynrcnn.modeling.model import build_model
from dynrcnn.presets import build_config, get_preset
from dynrcnn.engine.pretrain import ensure_pretrained, pretrain_preset, recipe, resolve_backbone, weights_path
from dynrcnn.io import file_sha256
from dynrcnn.checkpoint.weights import init_backbone

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    path, sha = ensure_pretrained("mini_pretrain_smoke", root, progress=False, log=lambda m: None)
    return root, path, sha


def test_built_once_with_record_and_reused(built):
    root, path, sha = built
    assert path == weights_path("mini_pretrain_smoke", root) and path.is_file()
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == sha == file_sha256(path)
    assert record["recipe"] == json.loads(json.dumps(recipe("mini_pretrain_smoke")))
    assert record["recipe"]["data"]["seed"] == 1  # never the evaluation data (seed 0)
    mtime = path.stat().st_mtime_ns
    assert ensure_pretrained("mini_pretrain_smoke", root, progress=False, log=lambda m: None) == (path, sha)
    assert path.stat().st_mtime_ns == mtime  # found and checked, not rebuilt
    state = torch.load(path, weights_only=True)
    assert state and all(k.startswith(("body.", "fpn.")) for k in state)


def test_recipe_change_gives_another_file():
    a = recipe("mini_pretrain_smoke")
    assert weights_path("mini_pretrain_smoke") != weights_path("mini_pretrain")
    assert a != recipe("mini_pretrain")


def test_fresh_run_starts_from_the_backbone_only(built):
    root, path, sha = built
    cfg = build_config("mini_smoke", "dynamic", overrides=["model.backbone_weights=pretrained:mini_pretrain_smoke"])
    cfg = resolve_backbone(cfg, root=root, progress=False)
    assert cfg.model.backbone_weights == str(path.resolve()) and cfg.model.backbone_sha256 == sha
    model = build_model(cfg, 7)
    fresh = build_model(cfg, 7)
    init_backbone(model, cfg)
    saved = torch.load(path, weights_only=True)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # the RPN and the R-CNN head keep their (seeded) random initialisation
    head = dict(fresh.roi_heads.named_parameters())
    for k, v in model.roi_heads.named_parameters():
        assert v.shape == head[k].shape


def test_changed_file_is_refused(built, tmp_path):
    root, path, sha = built
    bad = tmp_path / "b.pth"
    bad.write_bytes(path.read_bytes() + b"x")
    cfg = build_config("mini_smoke", "dynamic", overrides=[f"model.backbone_weights={bad}",
                                                           f"model.backbone_sha256={sha}"])
    with pytest.raises(CheckpointError, match="SHA-256"):
        init_backbone(build_model(cfg, 7), cfg)


def test_unresolved_or_unknown_names_are_refused():
    cfg = get_preset("mini")  # pretrained:mini_pretrain, not resolved to a file
    with pytest.raises(ConfigError, match="names the project's pretrained backbone"):
        init_backbone(build_model(cfg, 7), cfg)
    with pytest.raises(ConfigError, match="no pretraining preset"):
        pretrain_preset("pretrained:nope")
    assert pretrain_preset("some/file.pth") is None


def test_weights_of_another_shape_are_refused(built, tmp_path):
    root, path, _ = built
    state = torch.load(path, weights_only=True)
    state["body.conv1.weight"] = torch.zeros(1)
    other = tmp_path / "other.pth"
    torch.save(state, other)
    cfg = build_config("mini_smoke", "dynamic", overrides=[f"model.backbone_weights={other}"])
    with pytest.raises(ConfigError, match="body.conv1.weight"):
        init_backbone(build_model(cfg, 7), cfg)


def test_pretrained_backbone_fits_the_mini_model(built):
    # the pretraining presets share the mini model's backbone (body + FPN); only the RPN anchors differ
    root, path, sha = built
    cfg = build_config("mini", "dynamic", overrides=["model.backbone_weights=pretrained:mini_pretrain_smoke"])
    cfg = resolve_backbone(cfg, root=root, progress=False)
    assert cfg.model.backbone_sha256 == sha
    init_backbone(build_model(cfg, 7), cfg)  # checksum verified, every entry fits


def test_weights_are_found_in_the_checkout_or_the_cache_and_building_can_be_refused(tmp_path, monkeypatch, capsys):
    """Run from another folder, existing weights are found (no silent rebuild); with build=False a
    missing backbone is a one-line refusal naming where it looked."""
    import dynrcnn.engine.pretrain as pt
    from dynrcnn.errors import CheckpointError

    monkeypatch.setattr(pt, "CHECKOUT_ROOT", tmp_path / "checkout" / "data" / "pretrained")
    monkeypatch.setenv(pt.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    preset = "mini_pretrain_smoke"
    with pytest.raises(CheckpointError, match="no pretrained backbone .* in .*checkout.*cache"):
        pt.ensure_pretrained(preset, "data/pretrained", build=False)
    assert not (tmp_path / "data").exists()  # nothing drawn, nothing trained
    state = {"backbone.body.conv1.weight": torch.zeros(2, 3, 1, 1)}
    cached = tmp_path / "cache" / "pretrained"
    path, sha = pt.save_backbone(state, preset, cached, "test")
    found, found_sha = pt.ensure_pretrained(preset, "data/pretrained", build=False)
    assert found == path and found_sha == sha and not (tmp_path / "data").exists()
    from dynrcnn.cli import main

    capsys.readouterr()
    # a data folder that holds annotations (the data is checked first): the backbone is what is missing
    (tmp_path / "somedata" / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (tmp_path / "somedata" / "annotations" / f"instances_{split}.json").write_text(
            '{"images": [], "annotations": [], "categories": []}')
    assert main(["train", "--preset", "mini_smoke", "--data-root", str(tmp_path / "somedata"), "--out",
                 str(tmp_path / "run"), "--set", "model.backbone_weights=pretrained:mini_pretrain",
                 "--no-build-backbone"]) == 2
    assert "no pretrained backbone backbone-mini_pretrain-" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_settings_that_do_not_change_the_weights_do_not_change_the_recipe():
    """The backbone file is named by its recipe's hash: a setting added later that changes nothing
    trained (validation, tracking, logging) must not rename it, or every report rebuilds it."""
    from dynrcnn.rundir.integrity import MAY_CHANGE_ON_RESUME

    config = recipe("mini_pretrain")["config"]
    assert not set(MAY_CHANGE_ON_RESUME) & set(config), set(MAY_CHANGE_ON_RESUME) & set(config)
