"""What a newcomer meets first (issue 31, item 5): settings out of range are refused in one line
naming the key, one flag name for "replace what exists", help that fits a terminal, a final
checkpoint stored once, and no link to a page that does not exist yet."""

from __future__ import annotations

import os

import pytest
import torch

from dynrcnn.cli import build_parser, main
from dynrcnn.errors import ConfigError
from dynrcnn.presets import build_config


@pytest.mark.parametrize("item, key", [
    ("model.fg_iou_thresh=1.5", "model.fg_iou_thresh"), ("model.fg_iou_thresh=0", "model.fg_iou_thresh"),
    ("model.box_positive_fraction=1", "model.box_positive_fraction"), ("model.box_nms_thresh=1.2", "model.box_nms_thresh"),
    ("model.box_score_thresh=-0.1", "model.box_score_thresh"), ("model.rpn_nms_thresh=0", "model.rpn_nms_thresh"),
    ("model.min_size=0", "model.min_size"), ("model.max_size=64", "model.max_size"),
    ("model.box_batch_size_per_image=0", "model.box_batch_size_per_image"),
    ("model.rpn_post_nms_top_n_train=0", "model.rpn_post_nms_top_n_train"),
    ("model.box_detections_per_img=0", "model.box_detections_per_img"), ("model.anchor_sizes=0,32", "model.anchor_sizes"),
    ("dynamic.init_iou=1", "dynamic.init_iou"), ("dynamic.k_i=0", "dynamic.k_i"), ("dynamic.init_beta=0", "dynamic.init_beta"),
    ("lr=0", "lr"), ("base_lr=-1", "base_lr"), ("momentum=1.5", "momentum"), ("lr_gamma=0", "lr_gamma"),
    ("weight_decay=-1", "weight_decay"), ("warmup_iters=-1", "warmup_iters"), ("warmup_factor=2", "warmup_factor"),
    ("hflip_prob=1.5", "hflip_prob"), ("max_iter=0", "max_iter"), ("ims_per_batch=0", "ims_per_batch"),
    ("lr_steps=0,10", "lr_steps"), ("seed=-1", "seed"),
])
def test_out_of_range_setting_refused_naming_its_key(item, key):
    with pytest.raises(ConfigError) as e:
        build_config("mini_smoke", "dynamic", overrides=[item])
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_fg_iou_thresh_refused_by_the_command_line(tmp_path, capsys):
    code = main(["train", "--preset", "mini_smoke", "--set", "model.fg_iou_thresh=1.5", "--data-root",
                 str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: model.fg_iou_thresh must be in (0, 1), got 1.5") and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_edge_values_in_range_are_accepted():
    build_config("mini_smoke", "dynamic", overrides=["model.fg_iou_thresh=0.7", "model.box_score_thresh=0",
                                                     "model.box_nms_thresh=1", "warmup_iters=0", "lr_steps=",
                                                     "weight_decay=0", "hflip_prob=0", "model.rpn_nms_thresh=1"])


@pytest.mark.parametrize("argv", [["train", "--out", "r"], ["eval", "r"], ["report"],
                                  ["convert", "x.pth", "--out", "r"]])
def test_one_flag_name_replaces_what_exists_and_the_old_one_still_works(argv, capsys):
    parser = build_parser()
    assert parser.parse_args(argv + ["--overwrite"]).overwrite is True
    assert parser.parse_args(argv + ["--force"]).overwrite is True  # the old name, hidden
    assert parser.parse_args(argv).overwrite is False
    sub = argv[0]
    with pytest.raises(SystemExit):
        parser.parse_args([sub, "--help"])
    shown = capsys.readouterr().out
    assert "--overwrite" in shown and "--force" not in shown


@pytest.mark.parametrize("command", ["train", "eval", "report", "data", "predict", "runs", "convert"])
def test_help_fits_a_terminal(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    long = [line for line in capsys.readouterr().out.splitlines() if len(line) > 100]
    assert not long, long


@pytest.mark.parametrize("command", ["train", "eval", "report", "data", "predict", "runs", "convert"])
def test_help_prose_is_wrapped_once(command, capsys, monkeypatch):
    """The description is wrapped by the help formatter to the terminal, not wrapped twice (a
    text pre-wrapped at another width comes out ragged: a long line, then a one-word line)."""
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    paragraphs = capsys.readouterr().out.split("\n\n")
    prose = [p.splitlines() for p in paragraphs[1:] if p and not p.startswith(" ") and not p.split("\n")[0].endswith(":")]
    for lines in prose:
        for line in lines[:-1]:  # every line but a paragraph's last fills most of the width
            assert len(line) >= 50, (command, line)


def test_train_help_lists_every_setting_wrapped(capsys):
    from dynrcnn.config import valid_keys

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    keys_part = out.split("valid keys:", 1)[1]
    assert all(k in keys_part for k in valid_keys())
    assert len(keys_part.strip().splitlines()) > 5


# --------------------------------------------------------------------------------------------------
# the final checkpoint is stored once


def _state(iteration: int) -> dict:
    return {"model": {"w": torch.full((4,), float(iteration))}, "iteration": iteration}


def test_last_checkpoint_is_a_hard_link_to_the_periodic_one(tmp_path):
    from dynrcnn.checkpoint.state import find_resume_checkpoint, read_checkpoint, save_checkpoint

    ckpts = tmp_path / "checkpoints"
    save_checkpoint(ckpts, _state(2), periodic=True, keep=2)
    save_checkpoint(ckpts, _state(3), periodic=False, keep=2)  # a stop between periodic ones: its own file
    last = ckpts / "last.pth"
    assert last.stat().st_nlink == 1 and read_checkpoint(last)["iteration"] == 3
    save_checkpoint(ckpts, _state(4), periodic=True, keep=2)
    save_checkpoint(ckpts, _state(6), periodic=True, keep=2)  # iter 2 removed: keep=2
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["iter_0000004.pth", "iter_0000006.pth", "last.pth"]
    assert os.path.samefile(last, ckpts / "iter_0000006.pth")  # one file on disk, not a second copy
    assert read_checkpoint(last)["iteration"] == 6 and read_checkpoint(ckpts / "iter_0000004.pth")["iteration"] == 4
    path, ckpt = find_resume_checkpoint(ckpts)
    assert path == last and ckpt["iteration"] == 6
    (ckpts / "iter_0000006.pth").unlink()  # removing the periodic name leaves last.pth whole
    assert read_checkpoint(last)["iteration"] == 6
    save_checkpoint(ckpts, _state(7), periodic=False, keep=2)  # a later last.pth replaces the link, not the file
    assert read_checkpoint(last)["iteration"] == 7 and read_checkpoint(ckpts / "iter_0000004.pth")["iteration"] == 4
    assert not list(ckpts.glob("*.tmp"))


def test_last_checkpoint_is_a_copy_where_hard_links_fail(tmp_path, monkeypatch):
    from dynrcnn.checkpoint import state

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(state.os, "link", no_links)
    state.save_checkpoint(tmp_path, _state(2), periodic=True, keep=1)
    last = tmp_path / "last.pth"
    assert last.stat().st_nlink == 1 and state.read_checkpoint(last)["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000002.pth", "last.pth"]


# --------------------------------------------------------------------------------------------------
# index.html


def test_index_links_only_pages_that_exist(tmp_path):
    from dynrcnn.report.index import COMPANIONS, _companions

    out = tmp_path / "report"
    html = _companions(out)
    for rel, title, command in COMPANIONS:
        assert f'href="../{rel}"' not in html and f"{title} (not run yet)" in html and command in html
    first = tmp_path / COMPANIONS[0][0]
    first.parent.mkdir(parents=True)
    first.write_text("<html></html>")
    html = _companions(out)
    assert f'href="../{COMPANIONS[0][0]}"' in html and f"{COMPANIONS[0][1]} (not run yet)" not in html
    assert f'href="../{COMPANIONS[1][0]}"' not in html
