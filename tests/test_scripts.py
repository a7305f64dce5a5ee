"""Every script imports and answers ``--help``: the benchmarks, the MMDetection peer's scripts and
every ``dynrcnn`` command.

Scripts outside the package are imported by nothing else in the suite, so a module moved inside
``dynrcnn/`` breaks them silently (``benchmarks/before_after.py`` once imported ``group_runs``
from where it no longer was). ``--help`` runs a script's imports and its argument parser and
nothing else. The peer's scripts import mmdet, which only the peer environment ``.venv-mmdet``
(``make mmdet-env``) has: they run there, and are skipped, saying why, where it is missing.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from dynrcnn.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))
PEER = REPO / "peer_mmdet"
PEER_PYTHON = Path(os.environ.get("DYNRCNN_MMDET_PYTHON", REPO / ".venv-mmdet" / "bin" / "python"))
PEER_SCRIPTS = ("train.py",)  # command-line scripts; the other modules are imported (below)
PEER_MODULES = ("mmcv_ext", "test_parity")


def _help_of_script(path: Path, monkeypatch) -> str:
    """Run ``path --help`` as ``python path --help`` would, in this process; its help text."""
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    monkeypatch.syspath_prepend(str(path.parent))  # what python puts first for a script
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_.value.code in (0, None), f"{path.name} --help exited {exit_.value.code}"
    return out.getvalue()


def test_the_scripts_are_found():
    assert {p.name for p in BENCHMARKS} >= {"before_after.py", "overhead.py", "step.py"}
    assert all((PEER / name).is_file() for name in PEER_SCRIPTS)
    assert all((PEER / f"{name}.py").is_file() for name in PEER_MODULES)


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_and_answers_help(path, monkeypatch):
    assert "usage:" in _help_of_script(path, monkeypatch)


def _commands(parser) -> list[list[str]]:
    """Every command path of the parser: ["train"], ["data", "mini"], ..."""
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append([name])
                found += [[name, *rest] for rest in _commands(sub)]
    return found


COMMANDS = _commands(build_parser())


def test_every_command_is_listed():
    names = {" ".join(c) for c in COMMANDS}
    assert {"train", "pretrain", "eval", "runs", "predict", "report", "mmdet", "controls", "convert", "export",
            "data", "data mini", "data coco", "data verify"} <= names


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_cli_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: dynrcnn {' '.join(command)}" in capsys.readouterr().out


def _peer(args: list[str]) -> subprocess.CompletedProcess:
    if not PEER_PYTHON.exists():
        pytest.skip(f"no MMDetection peer environment at {PEER_PYTHON} (make mmdet-env): "
                    "peer_mmdet's scripts import mmdet, which only that environment has")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(PEER_PYTHON), *args], cwd=PEER, env=env, capture_output=True, text=True,
                          timeout=300)


# run in the peer environment, in peer_mmdet/: import each module, then each script's --help
PEER_PROBE = """
import importlib, runpy, sys
for module in sys.argv[1].split(","):
    importlib.import_module(module)
for script in sys.argv[2].split(","):
    print("==", script, flush=True)
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None), f"{script} --help exited {e.code}"
"""


def test_peer_scripts_import_and_answer_help_in_the_peer_environment():
    """One interpreter for all of them: importing mmdet takes most of the time."""
    proc = _peer(["-c", PEER_PROBE, ",".join(PEER_MODULES), ",".join(PEER_SCRIPTS)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in PEER_SCRIPTS:
        assert f"== {name}\nusage:" in proc.stdout, proc.stdout[-2000:]


def test_vs_mmdet_writes_its_rounds_to_the_page_and_one_line_to_readme(tmp_path, monkeypatch):
    """The side-by-side speed benchmark's output, with the two trainings replaced by fixed
    timings: each round's medians and ratio in the page's block, the median ratio in README's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vs_mmdet", REPO / "benchmarks" / "vs_mmdet.py")
    vs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vs)
    timings = iter([(0.16, 0.40), (0.18, 0.36), (0.17, 0.34)])
    monkeypatch.setattr(vs, "one_round", lambda args, work, seed: next(timings))
    page, readme = tmp_path / "performance.md", tmp_path / "README.md"
    page.write_text(f"a\n<!-- {vs.BLOCK}:BEGIN -->\nold\n<!-- {vs.BLOCK}:END -->\nb\n")
    readme.write_text(f"# R\n<!-- {vs.HEADLINE}:BEGIN -->\n<!-- {vs.HEADLINE}:END -->\nend\n")
    for path in (tmp_path / "data", tmp_path / "b.pth", tmp_path / "python"):
        path.write_text("") if path.suffix or path.name == "python" else path.mkdir()
    assert vs.main(["--data-root", str(tmp_path / "data"), "--backbone", str(tmp_path / "b.pth"), "--rounds", "3",
                    "--peer-python", str(tmp_path / "python"), "--page", str(page), "--readme", str(readme)]) == 0
    text = page.read_text()
    assert "| 0 | 0.160 | 0.400 | x0.40 |" in text and "| 2 | 0.170 | 0.340 | x0.50 |" in text
    assert "min x0.40, median x0.50, max x0.50" in text and "old" not in text and text.endswith("b\n")
    line = readme.read_text().splitlines()[2]
    assert line.startswith("- **Speed against MMDetection**") and "median x0.50 over 3 rounds" in line


def test_step_benchmark_mm_lever_is_the_same_convolution():
    """The ``mm`` lever of benchmarks/step.py computes each replaced convolution's function (float32,
    strided, 1 x 1 and dilated included) and replaces exactly the small-map convolutions of the preset's backbone."""
    import importlib.util

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("step_bench", REPO / "benchmarks" / "step.py")
        step = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(step)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    torch.manual_seed(0)
    for conv in (torch.nn.Conv2d(16, 24, 3, 1, 1), torch.nn.Conv2d(16, 24, 3, 2, 1, bias=False),
                 torch.nn.Conv2d(16, 24, 1, 2, 0, bias=False), torch.nn.Conv2d(16, 24, 3, 1, 2, dilation=2)):
        x = torch.randn(2, 16, 8, 8, requires_grad=True)
        ref = conv(x)
        out = step.ConvAsMatmul(conv)(x)
        assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
        g = torch.randn_like(ref)
        (gx_ref, gw_ref), (gx, gw) = (torch.autograd.grad(y, (x, conv.weight), g) for y in (ref, out))
        assert torch.allclose(gx, gx_ref, atol=1e-5) and torch.allclose(gw, gw_ref, atol=1e-4)
    v = step.build("fp32+mm", step.get_preset(step.REPORT_PRESET).model.arch, "cpu", 5)
    body = v["model"].backbone.body
    swapped = {n for n, m in body.named_modules() if isinstance(m, step.ConvAsMatmul)}
    size = step.get_preset(step.REPORT_PRESET).model.min_size  # 128 px: layer3 maps are 8 x 8, layer4's 4 x 4
    assert swapped and all(n.startswith(("layer3.", "layer4.")) for n in swapped), (size, swapped)
    assert len(swapped) == 6


def test_before_after_says_identical_equivalent_or_different_with_the_declared_margins(tmp_path):
    """benchmarks/before_after.py: the same runs again are ``identical`` on every row; a change that
    makes Dynamic R-CNN localise worse is ``different`` on its rows and its gain's, with the
    baseline's rows still ``identical``; its SPEED-CHECK block holds the table and the summary."""
    import importlib.util

    import math

    from dynrcnn.rundir.runs import find_runs
    from tests.test_plots import write_gt, write_run

    spec = importlib.util.spec_from_file_location("before_after", REPO / "benchmarks" / "before_after.py")
    ba = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ba)
    data = tmp_path / "data"
    write_gt(data, n_images=40)
    for folder, dyn_jitter in (("before", 1.0), ("same", 1.0), ("worse", 3.5)):
        for seed in (0, 1, 2):
            suffix = "" if seed == 0 else f"_seed{seed}"
            write_run(tmp_path / folder, "baseline" + suffix, "baseline", seed=seed, jitter=3.0, data_root=str(data))
            write_run(tmp_path / folder, "dynamic" + suffix, "dynamic", seed=seed, jitter=dyn_jitter,
                      data_root=str(data))
    before = find_runs(tmp_path / "before")
    same = ba.rows(before, find_runs(tmp_path / "same"), n_boot=50)
    assert len(same) == 6 and {r["verdict"] for r in same} == {"identical"}  # 2 configurations + gain, AP and AP90
    assert all(abs(r["delta"]) < 1e-9 and math.isclose(r["before"], r["after"]) for r in same)
    worse = {(r["what"], r["metric"]): r for r in ba.rows(before, find_runs(tmp_path / "worse"), n_boot=50)}
    assert worse[("baseline (RPN NMS 0.7)", "AP")]["verdict"] == "identical"
    dyn = worse[("dynamic (RPN NMS 0.7)", "AP")]
    assert dyn["verdict"] == "different" and dyn["high"] < 0 and dyn["seeds"] == "3 vs 3, paired"
    gain = worse[("gain of dynamic over baseline (RPN NMS 0.7)", "AP")]
    assert gain["verdict"] == "different" and math.isclose(gain["delta"], gain["after"] - gain["before"])
    page = tmp_path / "speed_check.md"
    page.write_text(f"# c\n<!-- {ba.BLOCK}:BEGIN -->\n<!-- {ba.BLOCK}:END -->\n")
    assert ba.main([str(tmp_path / "before"), str(tmp_path / "same"), "--n-boot", "50", "--page", str(page)]) == 0
    text = page.read_text()
    assert "| eval split | dynamic (RPN NMS 0.7) | AP90 |" in text
    assert "6 of 6 rows identical or equivalent within their declared margins (6 identical); the change is kept" in text


def test_footprint_measures_the_peak_of_a_suite_and_writes_readme(tmp_path):
    """benchmarks/footprint.py: a suite whose one test writes 3 MB into its tmp_path and passes
    peaks at >= 3 MB in its temp folder and leaves nothing there (a passing test's folder is
    deleted); pytest's summary is read; a folder's size counts a hard-linked file once (a run's
    last.pth) and no symbolic link;
    README's block holds the figures, and a README without the block is refused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("footprint", REPO / "benchmarks" / "footprint.py")
    fp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fp)
    suite_dir = tmp_path / "suite"
    suite_dir.mkdir()
    (suite_dir / "test_writes.py").write_text(
        "import time\n\ndef test_writes(tmp_path):\n"
        "    (tmp_path / 'blob').write_bytes(b'x' * 3_000_000)\n    time.sleep(2.5)\n")
    suite = fp.run_suite(sys.executable, tmp_path / "scratch",
                         [str(suite_dir), "--rootdir", str(suite_dir), "-o", "tmp_path_retention_policy=failed"])
    assert suite["returncode"] == 0 and suite["counts"] == "1 passed"
    assert 3_000_000 <= suite["peak"] < 4_000_000 and suite["left"] == 0
    assert list((tmp_path / "scratch").iterdir()) == []  # its temp folder is gone too

    runs = tmp_path / "runs" / "a"
    runs.mkdir(parents=True)
    (runs / "model_final.pth").write_bytes(b"x" * 1000)
    (runs / "last.pth").hardlink_to(runs / "model_final.pth")
    (runs / "link.pth").symlink_to(runs / "model_final.pth")
    (runs / "eval.json").write_bytes(b"x" * 10)
    assert fp.tree_bytes(tmp_path / "runs") == 1010 and fp.tree_bytes(tmp_path / "nope") == 0
    sizes = {".venv": 6 * fp.GIB, ".venv-mmdet": 0.4 * fp.GIB, "runs": 3.3 * fp.GIB, "data": None}
    text = fp.block_text(sizes, suite | {"seconds": 456.0, "peak": 2.34 * fp.GIB}, "a CPU")
    assert "`.venv` 6.0 GiB" in text and "`data/` not measured (absent)" in text and "`runs/mini` 3.3 GiB" in text
    assert "9.7 GiB in all" in text and "`make test`: 1 passed in 7.6 min; its temporary files peak at 2.3 GiB" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n<!-- {fp.BLOCK}:BEGIN -->\nold\n<!-- {fp.BLOCK}:END -->\n")
    assert fp.main(["--readme", str(readme), "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "nope"),
                    "--scratch", str(tmp_path / "scratch"), "--",
                    str(suite_dir), "--rootdir", str(suite_dir)]) == 0
    assert "**Disk and test time**" in readme.read_text() and "\nold\n" not in readme.read_text()
    (tmp_path / "plain.md").write_text("no block\n")
    assert fp.main(["--readme", str(tmp_path / "plain.md"), "--scratch", str(tmp_path / "scratch"), "--",
                    str(suite_dir), "--rootdir", str(suite_dir)]) == 2


@pytest.mark.slow
def test_device_check_runs_its_steps_on_the_cpu_and_writes_the_page(tmp_path):
    """benchmarks/device_check.py --smoke on the CPU: every step ends with exit 0, the three
    trainings are evaluated with finite losses, only Dynamic R-CNN moves its threshold and beta,
    the step benchmark answers; --page turns its JSON into the page's table."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("device_check", REPO / "benchmarks" / "device_check.py")
    dc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dc)
    out = tmp_path / "out"
    assert dc.main(["--device", "cpu", "--smoke", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    data = json.loads((out / dc.RESULT).read_text())
    assert data["environment"]["smoke"] is True and data["environment"]["device"] == "cpu"
    assert all(data[k]["exit"] == 0 for k in ("data", "pretrain", "step"))
    runs = {(m, a): data[f"train {m} {a}"] for m, a in dc.TRAININGS}
    assert all(r["exit"] == 0 and r["iterations"] == 6 and r["losses_finite"] and r["AP"] is not None
               for r in runs.values())
    assert runs[("baseline", "bf16")]["iou_threshold"] == 0.5 and runs[("baseline", "bf16")]["beta"] == 1.0
    assert runs[("dynamic", "bf16")]["beta"] < 1.0
    assert set(data["step"]["median_s"]) == {"fp32"}
    page = tmp_path / "gpu.md"
    page.write_text(f"# g\n<!-- {dc.BLOCK}:BEGIN -->\n<!-- {dc.BLOCK}:END -->\n")
    assert dc.main(["--page", str(page), "--from", str(out / dc.RESULT)]) == 0
    text = page.read_text()
    assert "| dynamic | fp16 | 0 | 6 |" in text and "(smoke: 24 images, 6 iterations; numbers meaningless)" in text
    assert "| fp32 |" in text and "| 1.000 |" in text
    assert f"on {data['environment']['device_name']} (torch" in text  # the run record's machine name
    (tmp_path / "plain.md").write_text("no block\n")
    assert dc.main(["--page", str(tmp_path / "plain.md"), "--from", str(out / dc.RESULT)]) == 2


def test_anchor_variants_switch_exactly_the_piece_they_name():
    """benchmarks/anchor_variants.py: the rounded-anchor variant keeps MMDetection's strides and
    rounds only the base anchors; the inferred-stride variant keeps the fractional base anchors and
    moves only P6 (61 px instead of 64 on an 800 x 1088 input); the kept share is the hand count."""
    import importlib.util

    import torch
    from torchvision.models.detection.image_list import ImageList

    spec = importlib.util.spec_from_file_location("anchor_variants", REPO / "benchmarks" / "anchor_variants.py")
    av = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(av)
    sizes, ratios = ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5
    images = ImageList(torch.zeros(1, 3, 800, 1088), [(800, 1067)])
    feats = [torch.zeros(1, 1, 800 // s, -(-1088 // s)) for s in (4, 8, 16, 32)] + [torch.zeros(1, 1, 13, 17)]
    mm, rounded, inferred = (cls(sizes, ratios)(images, feats)[0] for cls in
                             (av.MMDetAnchorGenerator, av.RoundedAnchors, av.InferredStrides))
    assert not torch.equal(mm, rounded) and torch.equal(rounded, rounded.round())  # base anchors rounded
    n_p6 = 13 * 17 * 3
    assert torch.equal(mm[:-n_p6], inferred[:-n_p6]) and not torch.equal(mm[-n_p6:], inferred[-n_p6:])
    step = inferred[-n_p6:].view(13, 17, 3, 4)[1, 0, 0, 1] - inferred[-n_p6:].view(13, 17, 3, 4)[0, 0, 0, 1]
    assert step.item() == 61 and (mm[-n_p6:].view(13, 17, 3, 4)[1, 0, 0, 1] - mm[-n_p6:].view(13, 17, 3, 4)[0, 0, 0, 1]).item() == 64
    ref = {"boxes": torch.tensor([[0., 0., 10., 10.], [20., 20., 40., 40.]]), "labels": torch.tensor([1, 2])}
    same = {"boxes": torch.tensor([[20., 20., 40., 40.], [0., 0., 10., 10.5]]), "labels": torch.tensor([2, 1])}
    assert av.kept_share(ref, same) == 0.5  # the second box matches; the first is at IoU 0.95
    assert av.kept_share(ref, {**same, "labels": torch.tensor([1, 2])}) == 0.0
