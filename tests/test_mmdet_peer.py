"""MMDetection's own DynamicRoIHead against ours: runs ``peer_mmdet/test_parity.py`` in the
MMDetection peer environment (``make mmdet-env``; ``make test`` builds it first).

The parity checks live in that file because they import mmdet, which is never a dependency of
dynrcnn and is not installed in dynrcnn's environment. This test fails (it never skips) when
the peer environment is missing, so the comparison runs on every machine that runs the suite.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER_PYTHON = Path(os.environ.get("DYNRCNN_MMDET_PYTHON", REPO / ".venv-mmdet" / "bin" / "python"))


def test_mmdet_dynamic_roi_head_parity():
    assert PEER_PYTHON.exists(), f"no MMDetection peer environment at {PEER_PYTHON}: run `make mmdet-env`"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [str(PEER_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "peer_mmdet" / "test_parity.py")],
        cwd=REPO / "peer_mmdet", env=env, capture_output=True, text=True, timeout=600)
    sys.stdout.write(proc.stdout[-4000:])
    assert proc.returncode == 0, f"MMDetection parity failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout and "failed" not in proc.stdout


def test_peer_environment_runs_the_suites_torch_and_dynrcnn():
    """The peer layers on .venv: MMDetection runs the very torch / torchvision / dynrcnn under test."""
    assert PEER_PYTHON.exists(), f"no MMDetection peer environment at {PEER_PYTHON}: run `make mmdet-env`"
    probe = "import torch, torchvision, dynrcnn; print(torch.__file__, torchvision.__file__, dynrcnn.__file__)"
    peer = subprocess.run([str(PEER_PYTHON), "-c", probe], capture_output=True, text=True, timeout=120)
    assert peer.returncode == 0, peer.stderr[-2000:]
    ours = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert peer.stdout.split() == ours.stdout.split()
