"""Checkpoints: what one holds, writing, reading (``weights_only``), fallback and compatibility.

A checkpoint holds the model (the dynamic head's threshold, beta and statistics records
included), the optimizer, the iteration (the learning rate is a pure function of it), the
torch/CUDA/numpy/python RNG states of every rank, the data position and the
preset/method/convention it belongs to. Everything is stored as tensors and plain Python
values so that ``torch.load(weights_only=True)`` reads it. Files are written atomically; a
resume falls back to the newest readable periodic checkpoint when ``last.pth`` is damaged.
File names come from :mod:`dynrcnn.rundir.runs`. :mod:`dynrcnn.engine.trainer` writes checkpoints,
:mod:`dynrcnn.evaluation.coco_eval` reads them; neither imports the other.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from dynrcnn.rundir import runs
from dynrcnn.config import Config
from dynrcnn.errors import CheckpointError
from dynrcnn.io import atomic_write_bytes

CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------------------
# RNG state (as tensors / plain types so that weights_only loading works)


def get_rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# --------------------------------------------------------------------------------------
# content


def make_state(cfg: Config, iteration: int, model, optimizer, scaler, rng_states: list, world_size: int,
               lr: float, elapsed_sec: float) -> dict:
    """The checkpoint of a training run at ``iteration`` (``rng_states``: one per rank)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"iteration": iteration, "lr": lr},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"ranks": rng_states},
        "data_position": iteration,
        "world_size": world_size,
        "preset": cfg.preset,
        "method": cfg.method,
        "convention": cfg.dynamic.convention,
        "config": json.loads(json.dumps(cfg.to_dict())),
        "elapsed_sec": elapsed_sec,
    }


def restore(ckpt: dict, model, optimizer=None, scaler=None) -> float:
    """Load a checkpoint into ``model`` (and ``optimizer``/``scaler`` when given); return the
    training time it had already taken (seconds)."""
    model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return float(ckpt.get("elapsed_sec", 0.0))


def restore_rng(ckpt: dict, rank: int, world_size: int) -> None:
    """Restore this rank's RNG states (rank 0's when the world size changed)."""
    per_rank = ckpt.get("rng", {}).get("ranks")
    if per_rank:
        set_rng_state(per_rank[rank] if len(per_rank) == world_size else per_rank[0])


# --------------------------------------------------------------------------------------
# files


def _serialise(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def write_checkpoint(path: Path, state: dict) -> None:
    """Write one checkpoint file atomically (e.g. ``best.pth``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), _serialise(state))


def _atomic_link(src: Path, dst: Path) -> bool:
    """Make ``dst`` a hard link to ``src``, atomically (a reader sees the old ``dst`` or the new one);
    False when the file system has no hard links (the caller writes a copy instead)."""
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def save_checkpoint(ckpt_dir: Path, state: dict, periodic: bool, keep: int) -> None:
    """Write ``last.pth`` (and ``iter_XXXXXXX.pth`` when ``periodic``), keep the last ``keep``
    periodic ones. When both are written, ``last.pth`` is a hard link to the periodic file, not a
    second copy (one file's disk space; a copy where the file system has no hard links): both names
    stay valid on their own, since every later write replaces ``last.pth`` by a new file
    (``os.replace``) and removing an old periodic name leaves ``last.pth`` as it is."""
    data = _serialise(state)
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last = ckpt_dir / runs.LAST_CHECKPOINT
    if periodic:
        path = runs.periodic_checkpoint(ckpt_dir, state["iteration"])
        atomic_write_bytes(path, data)
        periodic_files = runs.periodic_checkpoints(ckpt_dir)
        for _, old in periodic_files[: max(0, len(periodic_files) - max(keep, 1))]:
            old.unlink(missing_ok=True)
        if _atomic_link(path, last):
            return
    atomic_write_bytes(last, data)


def read_checkpoint(path: Path | str) -> dict:
    """Load a checkpoint with ``weights_only=True``; :class:`CheckpointError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle error, ...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "iteration" not in ckpt:
        raise CheckpointError(f"{path} is not a dynrcnn checkpoint (no model/iteration)")
    return ckpt


def find_resume_checkpoint(ckpt_dir: Path) -> tuple[Path, dict] | None:
    """The newest readable checkpoint: ``last.pth``, else periodic ones newest first.

    A damaged file is skipped with a warning naming it. Returns ``None`` when the folder
    holds no checkpoint at all; raises :class:`CheckpointError` when all are damaged.
    """
    ckpt_dir = Path(ckpt_dir)
    candidates = []
    if (ckpt_dir / runs.LAST_CHECKPOINT).exists():
        candidates.append(ckpt_dir / runs.LAST_CHECKPOINT)
    candidates += [p for _, p in reversed(runs.periodic_checkpoints(ckpt_dir))]
    if not candidates:
        return None
    errors = []
    for path in candidates:
        try:
            return path, read_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"{e}; trying an older checkpoint", RuntimeWarning, stacklevel=2)
            print(f"warning: {e}; trying an older checkpoint", file=sys.stderr)
            errors.append(str(e))
    raise CheckpointError("no readable checkpoint in " + str(ckpt_dir) + ": " + "; ".join(errors))


def check_compatible(ckpt: dict, cfg: Config, path: Path | str) -> None:
    """Refuse a checkpoint of a different preset, method or convention (naming both)."""
    mine = {"preset": cfg.preset, "method": cfg.method, "convention": cfg.dynamic.convention}
    theirs = {k: ckpt.get(k) for k in mine}
    diff = [k for k in mine if theirs[k] != mine[k]]
    if diff:
        what = ", ".join(f"{k} {theirs[k]!r} (checkpoint) vs {mine[k]!r} (this run)" for k in diff)
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run: {what}. Use another --out, or the "
            f"same --preset/--method/--convention as the checkpoint."
        )
    saved = ckpt.get("config", {}).get("dynamic", {}).get("interval")
    if saved is not None and int(saved) != cfg.dynamic.interval:
        raise CheckpointError(
            f"checkpoint {path} was trained with dynamic.interval={saved}, this run has "
            f"{cfg.dynamic.interval}; the dynamic statistics cannot be continued"
        )


def load_for_eval(path: Path | str, cfg: Config) -> dict:
    """Read a checkpoint and check that it belongs to ``cfg``'s run."""
    ckpt = read_checkpoint(path)
    check_compatible(ckpt, cfg, path)
    return ckpt


__all__ = ["CHECKPOINT_FORMAT", "get_rng_state", "set_rng_state", "make_state", "restore", "restore_rng",
           "save_checkpoint", "write_checkpoint", "read_checkpoint", "find_resume_checkpoint", "check_compatible",
           "load_for_eval"]
