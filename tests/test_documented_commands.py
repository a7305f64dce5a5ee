"""Every command that README.md and docs/*.md show is executed here, or named with why it is not.

The shell blocks (```bash, ```sh, ```shell, ```console) of every page are read, one command per
line (backslash continuations joined, comments dropped), papermill commands included. Each one is
either in :data:`RUN` (run in a temporary folder on tiny generated data: ``dynrcnn`` becomes
``.venv/bin/python -m dynrcnn``, the ``mini`` preset ``mini_smoke`` with a few iterations, ``~`` a
home folder inside the temporary one, papermill's paths absolute paths there, a ``make`` target its
recipe with ``--root`` there) or in :data:`SKIPS` with the reason. A page that gains, loses or
changes a command fails :func:`test_every_documented_command_is_run_or_skipped` until the tables
follow it.

One data folder and one tiny run serve every command that needs them (:class:`Sandbox` runs a
command's prerequisites first, once). A command that needs another's output is also run without
it: it must stop with one ``error:`` line that says what to run first, never with a traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
PY = sys.executable  # .venv/bin/python under make test
PAPERMILL = str(Path(PY).parent / "papermill")
COMMAND_WORDS = ("dynrcnn", "make", "torchrun", "srun", "python", ".venv/", "papermill", "OMP_NUM_THREADS")


def _blocks(text: str):
    """(first line number, language, lines) of each fenced block."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(```|~~~)\s*(\S*)", lines[i])
        if not m:
            i += 1
            continue
        start, lang, body = i + 1, m.group(2).lower(), []
        i += 1
        while i < len(lines) and not lines[i].startswith(m.group(1)):
            body.append(lines[i])
            i += 1
        yield start, lang, body
        i += 1


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` at the start of a word, outside quotes)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k].rstrip()
    return line.rstrip()


def documented_commands() -> list[tuple[str, int, str]]:
    """(page, line, command) of every command in the shell blocks, whitespace collapsed."""
    found = []
    for page in PAGES:
        for start, lang, body in _blocks(page.read_text()):
            if lang not in SHELL:
                continue
            pending, first = "", None
            for n, raw in enumerate(body, start + 1):
                line = _strip_comment(raw.strip().removeprefix("$ "))
                if not line and not pending:
                    continue
                first = first or n
                if line.endswith("\\"):
                    pending += line[:-1] + " "
                    continue
                command = " ".join((pending + line).split())
                found.append((str(page.relative_to(REPO)), first, command))
                pending, first = "", None
    return found


# ----------------------------------------------------------------------------------------------
# the tables: what runs here, and what does not with why

COCO = "needs COCO 2017 (20 GB download) and, at the paper's recipe, a GPU"
GPU = "needs CUDA GPUs (this suite runs on CPU); the two-node rendezvous is tests/test_distributed_train.py"
PUBLISHED = "needs MMDetection's published checkpoints (network) and COCO; the conversion is tests/test_convert.py"
SKIPS = {
    "make test": "is this suite (it would run itself)",
    "make smoke": "the smoke report's pipeline is tests/test_notebooks.py's smoke fixture (2-5 minutes; not run twice); "
                  "test_make_smoke_is_the_smoke_profile checks the recipe",
    "make report": "make report's 30-minute runs; its pipeline is make smoke's, run in tests/test_notebooks.py",
    "make report-quick": "the report's runs at 300 iterations, about 10 minutes; the same pipeline as make smoke",
    "make benchmark": "minutes of timing on a quiet machine, and it rewrites docs/performance.md",
    "make mmdet-env": "network: downloads mmdet, mmengine and mmcv-lite from PyPI (make test builds it)",
    "make jupyter": "starts a JupyterLab server (and installs the notebook extra from PyPI); "
                    "test_make_jupyter_allows_root checks its command line",
    "dynrcnn data coco --root data/coco": COCO,
    "dynrcnn data verify --root data/coco": COCO,
    "dynrcnn report --profile coco --data-root data/coco --device cuda": COCO,
    "dynrcnn train --preset coco_r50_fpn_1x_1gpu --method dynamic --data-root data/coco --out runs/coco_dyn_1gpu "
    "--set model.rpn_nms_thresh=0.85": GPU,
    "torchrun --nproc_per_node=8 -m dynrcnn train --preset coco_r50_fpn_1x --method dynamic --data-root data/coco "
    "--out runs/coco_dyn --set model.rpn_nms_thresh=0.85": "torchrun with 8 processes; " + GPU,
    "torchrun --nnodes=2 --nproc-per-node=8 --node-rank=$NODE_RANK --rdzv-backend=c10d "
    "--rdzv-endpoint=$MASTER:29400 --rdzv-id=dynrcnn-coco -m dynrcnn train --preset coco_r50_fpn_1x --method dynamic "
    "--data-root /shared/coco --out /shared/runs/coco_dyn --set model.rpn_nms_thresh=0.85": "several machines; " + GPU,
    "srun torchrun --nnodes=$SLURM_NNODES --nproc-per-node=8 --rdzv-backend=c10d "
    "--rdzv-endpoint=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1):29400 --rdzv-id=$SLURM_JOB_ID "
    "-m dynrcnn train --preset coco_r50_fpn_1x --method dynamic --data-root /shared/coco --out "
    "/shared/runs/coco_dyn --set model.rpn_nms_thresh=0.85": "SLURM on several machines; " + GPU,
    "dynrcnn convert faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth --from mmdet --out "
    "runs/published/faster_rcnn": PUBLISHED,
    "dynrcnn convert dynamic_rcnn_r50_fpn_1x-62a3f276.pth --from mmdet --out runs/published/dynamic_rcnn": PUBLISHED,
    "dynrcnn eval runs/published/faster_rcnn --data-root data/coco": PUBLISHED,
    "dynrcnn eval runs/published/dynamic_rcnn --data-root data/coco": PUBLISHED,
    "dynrcnn export runs/published/dynamic_rcnn --to torchvision --out dynamic_rcnn_torchvision.pth": PUBLISHED,
    "dynrcnn report --profile coco --data-root data/coco --published-weights "
    "faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth dynamic_rcnn_r50_fpn_1x-62a3f276.pth": PUBLISHED,
    "dynrcnn premise search --jobs 2": "hours of baseline training (seven candidates x nine runs); "
                                       "tests/test_premise.py runs the search end to end on the smoke preset",
    "dynrcnn premise freeze": "needs the search's record with a candidate that shows the paradox; "
                              "tests/test_premise_study.py tests the rule, the draw and the declaration",
    "make report-premise": "needs a frozen benchmark and about an hour of training (60 runs); "
                           "tests/test_premise_study.py runs the same study end to end on a tiny draw",
    "dynrcnn data trees --out data/trees": "network: fetches the deepforest wheel from PyPI; tests/test_trees.py "
                                           "prepares a hand-made wheel through the same code",
    "OMP_NUM_THREADS=1 dynrcnn train --preset trees --method dynamic --data-root data/trees --out runs/trees/dynamic "
    "--set model.rpn_nms_thresh=0.85": "needs data/trees (the wheel from PyPI) and 8 minutes of training; "
                                       "tests/test_efficientnet.py trains a step of the same detector",
    "make report-trees": "network when data/trees is missing (the deepforest wheel) and 40 to 90 minutes of training; "
                         "tests/test_trees_study.py runs the same study end to end on its tiny profile",
    "dynrcnn predict runs/trees/dynamic aerial.png --out build/aerial --tile 400":
        "needs a trained trees run and an aerial image; tests/test_predict_tiled.py runs predict --tile on a tiny run",
    "python benchmarks/before_after.py /tmp/before/runs/mini /tmp/after/runs/mini":
        "needs make report's runs from two fresh clones (before and after the speed work), an hour of training",
}

# a few iterations of the mini_smoke preset (the mini preset needs its pretrained backbone: minutes)
TINY = ("--set max_iter=4 --set lr_steps=3 --set warmup_iters=1 --set checkpoint_period=2 --set log_period=2 "
        "--set dynamic.interval=2 --set ims_per_batch=2 --set num_workers=0 --set eval_at_end=false")
TINY_YAML = ("overrides: [max_iter=4, lr_steps=3, warmup_iters=1, checkpoint_period=2, log_period=2, "
             "dynamic.interval=2, ims_per_batch=2, num_workers=0, eval_at_end=false]")
DATA = "dynrcnn data mini --out data/mini"
TRAIN_DYN = ("OMP_NUM_THREADS=1 dynrcnn train --preset mini --method dynamic --data-root data/mini "
             "--out runs/mini_dynamic")
TRAIN_MINE = ("dynrcnn train --preset mini --method dynamic --data-root ~/mydata --out runs/mine --set model.min_size=256 "
              "--set model.max_size=320 --set max_iter=2000 --set lr_steps=1500,1800")
PM_TRAIN = ".venv/bin/papermill notebooks/03_train.ipynb build/train_dla.ipynb -p method dla -p run_dir runs/scratch/dla"
PM_CONTROLS = ".venv/bin/papermill notebooks/07_controls.ipynb build/controls.ipynb -p controls_root runs/controls"


@dataclass
class Cmd:
    """How a documented command runs here: ``needs`` (commands whose output it reads, run first),
    ``add`` (arguments appended: fewer images or iterations, paths kept inside the sandbox),
    ``fails`` (it is documented to need what no test can make, e.g. make report's runs: it must
    stop with this hint), ``expect`` (text its output shows)."""

    needs: tuple[str, ...] = ()
    prepare: object = None  # a function of the sandbox's folder, called before the command
    add: str = ""
    fails: str = ""
    expect: str = ""


def committed_results(root: Path) -> None:
    """The committed ``figures/results.json`` in ``root``, committed to a git repository there (what
    ``check-report`` compares against) and copied to ``other/`` (a "fresh" report of the same runs)."""
    text = subprocess.run(["git", "show", "HEAD:figures/results.json"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout
    for rel in ("figures/results.json", "other/results.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if not (root / ".git").exists():
        git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run(git + ["add", "figures/results.json"], cwd=root, check=True)
        subprocess.run(git + ["commit", "-q", "-m", "committed report"], cwd=root, check=True)


RUN = {
    DATA: Cmd(add="--train 8 --val 4 --workers 0 --quiet"),
    "dynrcnn data verify --root data/mini": Cmd(needs=(DATA,)),
    TRAIN_DYN: Cmd(needs=(DATA,), add=TINY),
    "OMP_NUM_THREADS=1 dynrcnn train --preset mini --method baseline --data-root data/mini --out runs/mini_baseline":
        Cmd(needs=(DATA,), add=TINY),
    TRAIN_MINE: Cmd(needs=(DATA,), add=TINY),
    "dynrcnn eval runs/mine": Cmd(needs=(TRAIN_MINE,), expect="AP"),
    "dynrcnn predict runs/mine ~/mydata/val --out build/mine": Cmd(needs=(TRAIN_MINE,)),
    "dynrcnn train --resume runs/mini_dynamic": Cmd(needs=(TRAIN_DYN,), expect="nothing to do"),
    "dynrcnn eval runs/mini_dynamic": Cmd(needs=(TRAIN_DYN,), expect="AP"),
    "dynrcnn runs runs/": Cmd(needs=(TRAIN_DYN,), expect="mini_dynamic"),
    PM_TRAIN: Cmd(needs=(DATA,), add=f"-p profile smoke -p preset mini_smoke -p data_root {{root}}/data/mini "
                                     f"-p run_dir {{root}}/runs/scratch/dla -p num_threads 1 -y '{TINY_YAML}'"),
    PM_CONTROLS: Cmd(add="-p controls_root {root}/runs/controls -p reference_root {root}/runs/mini "
                         "-p figures_dir {root}/figures/controls", fails="make report-controls"),
    "dynrcnn check-report": Cmd(prepare=committed_results, expect="identical"),
    "dynrcnn check-report --fresh other/results.json --against figures/results.json":
        Cmd(prepare=committed_results, expect="identical"),
    "make mmdet": Cmd(fails="run 'make report' first"),
    "make report-controls": Cmd(fails="run 'make report' first"),
}


def test_every_documented_command_is_run_or_skipped():
    documented = {c for _, _, c in documented_commands()}
    unknown = sorted(documented - set(RUN) - set(SKIPS))
    assert not unknown, f"documented commands neither run nor skipped here (add them to RUN or SKIPS): {unknown}"
    stale = sorted((set(RUN) | set(SKIPS)) - documented)
    assert not stale, f"commands in this test's tables that no page shows any more: {stale}"
    assert not set(RUN) & set(SKIPS)
    assert all(len(reason) > 20 for reason in SKIPS.values())


def test_the_reader_finds_blocks_continuations_and_papermill():
    found = documented_commands()
    pages = {p for p, _, _ in found}
    assert {"README.md", "docs/report.md", "docs/training.md", "docs/gpu.md", "docs/data.md"} <= pages
    assert PM_TRAIN in {c for _, _, c in found} and TRAIN_MINE in {c for _, _, c in found}  # a "\" continuation
    assert not any(c.startswith("#") or " # " in c for _, _, c in found)


def test_no_command_hides_in_an_indented_block():
    """Commands go in fenced shell blocks (what this test reads), not in 4-space indented code."""
    for page in PAGES:
        fenced = False
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith(("```", "~~~")):
                fenced = not fenced
            elif not fenced and line.startswith("    ") and line.strip().startswith(COMMAND_WORDS):
                pytest.fail(f"{page.relative_to(REPO)}:{n}: an indented command; put it in a ```bash block")


# ----------------------------------------------------------------------------------------------
# running them


def _make_recipe(target: str) -> str:
    """The one ``$(PY) -m dynrcnn ...`` line of a Makefile target."""
    text = (REPO / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M)
    assert m, f"Makefile has no target {target}"
    lines = [line.strip() for line in m.group(1).splitlines() if "-m dynrcnn" in line]
    assert len(lines) == 1, (target, lines)
    return lines[0]


def translate(command: str, root: Path) -> str:
    """The documented ``command`` as this test runs it in ``root``."""
    spec = RUN[command]
    if command.startswith("make "):
        recipe = _make_recipe(command.split()[1])
        return recipe.replace("$(PY)", shlex.quote(PY)) + f" --root {shlex.quote(str(root))}"
    out = re.sub(r"(^|\s)dynrcnn ", lambda m: f"{m.group(1)}{shlex.quote(PY)} -m dynrcnn ", command, count=1)
    out = out.replace(".venv/bin/papermill notebooks/", f"{shlex.quote(PAPERMILL)} {shlex.quote(str(REPO))}/notebooks/")
    out = out.replace("--preset mini ", "--preset mini_smoke ")
    return out + (" " + spec.add.format(root=shlex.quote(str(root))) if spec.add else "")


class Sandbox:
    """A temporary working folder (and ``$HOME``) in which documented commands run, each once,
    after the commands it needs."""

    def __init__(self, root: Path):
        self.root = root
        (root / "home").mkdir(parents=True)
        (root / "build").mkdir()
        self.done: dict[str, subprocess.CompletedProcess] = {}

    def env(self) -> dict:
        env = dict(os.environ, HOME=str(self.root / "home"), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        env.pop("DYNRCNN_CACHE", None)
        return env

    def run(self, command: str, timeout: int = 600) -> subprocess.CompletedProcess:
        if command in self.done:
            return self.done[command]
        for need in RUN[command].needs:
            res = self.run(need, timeout)
            assert res.returncode == 0, f"{need} (needed by {command}) failed:\n{res.stdout}\n{res.stderr}"
        if RUN[command].prepare:
            RUN[command].prepare(self.root)
        res = subprocess.run(["bash", "-c", translate(command, self.root)], cwd=self.root, env=self.env(),
                             capture_output=True, text=True, timeout=timeout)
        if command == DATA and res.returncode == 0:  # ~/mydata of "your own dataset": the same tiny benchmark
            (self.root / "home" / "mydata").symlink_to(self.root / "data" / "mini")
        self.done[command] = res
        return res


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return Sandbox(tmp_path_factory.mktemp("documented"))


def _one_line_error(res: subprocess.CompletedProcess, hint: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert hint in out, out


def _check(res: subprocess.CompletedProcess, spec: Cmd) -> None:
    out = res.stdout + res.stderr
    if spec.fails:
        _one_line_error(res, spec.fails)
        return
    assert res.returncode == 0, out
    assert "Traceback" not in out, out
    if spec.expect:
        assert spec.expect in out, out


def _needs_training(command: str) -> bool:
    return " train " in f" {command} " or "papermill" in command or any(_needs_training(n) for n in RUN[command].needs)


# under ~10 s each; the ones that train or start a notebook kernel are marked slow (they still run in make test)
FAST = [c for c in RUN if not _needs_training(c)]
SLOW = [c for c in RUN if _needs_training(c)]


def _id(command: str) -> str:
    return re.sub(r"[^\w.=/-]+", "_", command.replace("OMP_NUM_THREADS=1 ", ""))[:70]


def _run_and_check(sandbox: Sandbox, command: str) -> None:
    res = sandbox.run(command)
    _check(res, RUN[command])
    if RUN[command].fails and not command.startswith(".venv/bin/papermill"):
        # a dynrcnn command: the hint is its one line, no traceback (papermill prints its own traceback)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("command", FAST, ids=_id)
def test_documented_command_runs(sandbox, command):
    _run_and_check(sandbox, command)


@pytest.mark.slow
@pytest.mark.parametrize("command", SLOW, ids=_id)
def test_documented_slow_command_runs(sandbox, command):
    _run_and_check(sandbox, command)


NEEDY = [c for c, s in RUN.items() if s.needs and not c.startswith(".venv/bin/papermill")]


def test_commands_without_their_input_say_what_to_run_first(tmp_path, monkeypatch, capsys):
    """Each command that needs another's output, run before it (in this process: no start-up per
    command): one ``error:`` line that names what is missing, exit 2, no traceback."""
    from dynrcnn.cli import main

    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DYNRCNN_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    for command in NEEDY:
        words = [os.path.expanduser(w) for w in shlex.split(translate(command, tmp_path))]
        argv = words[words.index("dynrcnn") + 1:]
        assert main(argv) == 2, command
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: "), (command, err)
        assert re.search(r"dynrcnn (data|train)|--out|no such|does not exist|not a run directory", err[0]), err[0]


@pytest.mark.slow
def test_train_notebook_refuses_a_folder_holding_another_run(sandbox):
    """03_train into a folder that holds a run of other settings: refused with papermill's flag
    (``-p force True``), never the CLI's ``--overwrite``/``--resume``; with it the run is replaced."""
    assert sandbox.run(PM_TRAIN).returncode == 0
    other = translate(PM_TRAIN, sandbox.root).replace("-p method dla", "-p method dsl")
    res = subprocess.run(["bash", "-c", other], cwd=sandbox.root, env=sandbox.env(), capture_output=True, text=True,
                         timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "-p force True" in out and "--overwrite" not in out, out
    res = subprocess.run(["bash", "-c", other + " -p force True"], cwd=sandbox.root, env=sandbox.env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    import json

    assert json.loads((sandbox.root / "runs" / "scratch" / "dla" / "config.json").read_text())["method"] == "dsl"


def test_make_jupyter_allows_root():
    """JupyterLab refuses to start as root without --allow-root: the Makefile adds it for root only."""
    res = subprocess.run(["make", "-n", "jupyter"], cwd=REPO, capture_output=True, text=True)
    line = [x for x in res.stdout.splitlines() if "jupyter lab" in x]
    assert line, res.stdout + res.stderr
    assert ("--allow-root" in line[-1]) == (os.geteuid() == 0)


def test_make_smoke_is_the_smoke_profile():
    """``make smoke`` is ``dynrcnn report --profile smoke``: the pipeline tests/test_notebooks.py runs end to end."""
    assert _make_recipe("smoke") == "$(PY) -m dynrcnn report --profile smoke"
