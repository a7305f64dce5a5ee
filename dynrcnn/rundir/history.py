"""``env.json`` as a history: where and how each segment of a run was trained.

A run may be trained in segments: started on one machine, killed, resumed on another (another
CPU type, another torch). Its numbers depend on every segment, so ``env.json`` keeps the
environment the run *started* in exactly as the engine wrote it (its top-level keys) and every
resume appends one entry to its ``resumes`` list: the iteration it resumed from, the time, the
equivalent command, versions, device, CPU model, numeric path and git commit.

Readers go through :func:`segments`: one dict per segment, oldest first, each with the
``iteration`` it started at. ``env.json`` files older than the history (no ``resumes``; a
resume rewrote the whole file and set ``resumed_from_iteration``) still read: they give one
segment, starting at that iteration, the earlier segments' record being lost.

:func:`changed_keys` says what differs between segments, :func:`mixed_numeric_paths` whether
the segments ran on different numeric paths (bf16 on AMX, bf16 on AVX512-BF16, float32, CUDA):
then the run's numbers are not those of any single machine and the report flags it.
"""

from __future__ import annotations

from pathlib import Path

from dynrcnn.io import read_json, write_json
from dynrcnn.rundir.runs import ENV

#: the key of env.json whose list holds one entry per resume
RESUMES = "resumes"
#: what tells two segments' environments apart (versions, machine, numeric path, code)
COMPARED = ("numeric_path", "cpu_model", "device", "device_name", "num_processes", "torch", "torchvision",
            "numpy", "python", "git_commit", "hostname")


def _env(run_or_env) -> dict:
    """An ``env.json`` dict from a :class:`~dynrcnn.rundir.runs.Run`, a run directory or the dict."""
    if isinstance(run_or_env, dict):
        return run_or_env
    if isinstance(run_or_env, (str, Path)):
        return read_json(Path(run_or_env) / ENV) or {}
    return getattr(run_or_env, "env", None) or {}


def numeric_path_of(env: dict) -> str | None:
    """The numeric path a segment ran on: the recorded ``numeric_path``, else what an older
    record allows (``fp32`` when autocast was off; a bf16 CPU run of an older record does not
    say which hardware ran it: ``bf16 (CPU not recorded)``; ``None`` when nothing is recorded)."""
    if env.get("numeric_path"):
        return str(env["numeric_path"])
    autocast = env.get("autocast")
    device = str(env.get("device") or "")
    if autocast == "none":
        return "fp32 (CUDA)" if device.startswith("cuda") else "fp32"
    if autocast and device.startswith("cuda"):
        return f"{autocast} (CUDA)"
    if autocast and device.startswith("cpu"):
        short = str(autocast).replace("bfloat16", "bf16").replace("float16", "fp16")
        return f"{short} (CPU not recorded)"  # which oneDNN kernels ran is unknown: AMX or AVX512-BF16
    return None


def segments(run_or_env) -> list[dict]:
    """One dict per training segment, oldest first: the starting environment (``iteration`` 0,
    or ``resumed_from_iteration`` of an older record), then each resume entry. Each holds the
    environment keys and ``iteration`` (where the segment started) and ``numeric_path``
    (:func:`numeric_path_of`). ``[]`` for a run without ``env.json``."""
    env = _env(run_or_env)
    if not env:
        return []
    first = {k: v for k, v in env.items() if k != RESUMES}
    first["iteration"] = int(env.get("resumed_from_iteration") or 0)
    out = [first]
    for entry in env.get(RESUMES) or []:
        out.append(dict(entry))
    for seg in out:
        seg["numeric_path"] = numeric_path_of(seg)
    return out


def changed_keys(run_or_env) -> list[str]:
    """The :data:`COMPARED` keys whose value differs between the run's segments (in that order;
    a key a segment does not record is not compared)."""
    segs = segments(run_or_env)
    changed = []
    for key in COMPARED:
        values = {repr(s[key]) for s in segs if s.get(key) is not None}
        if len(values) > 1:
            changed.append(key)
    return changed


def numeric_paths(run_or_env) -> list[str | None]:
    """The numeric path of each segment (``None`` where the record does not say)."""
    return [s["numeric_path"] for s in segments(run_or_env)]


def mixed_numeric_paths(run_or_env) -> bool:
    """Whether the run's segments ran on different numeric paths (e.g. started with bf16 on AMX,
    resumed with bf16 on AVX512-BF16): its numbers then belong to no single machine, and the
    report flags it. Segments whose path is not recorded are left out of the comparison."""
    return len({p for p in numeric_paths(run_or_env) if p is not None}) > 1


def describe(run_or_env) -> str:
    """One line for tables: ``""`` for a run trained in one environment (or one segment), else
    ``"<n> segments, changed: <keys>"`` (``"<n> segments"`` when nothing compared changed)."""
    segs = segments(run_or_env)
    if len(segs) <= 1:
        return ""
    changed = changed_keys(run_or_env)
    return f"{len(segs)} segments" + (f", changed: {', '.join(changed)}" if changed else "")


def append_resume(run_dir, entry: dict) -> None:
    """Append one resume ``entry`` to ``RUN_DIR/env.json`` (atomically); the starting environment
    and earlier entries stay as written. A run without ``env.json`` gets the entry as its record."""
    path = Path(run_dir) / ENV
    env = read_json(path)
    if env is None:
        write_json(path, {**entry, "resumed_from_iteration": entry.get("iteration")})
        return
    env[RESUMES] = [*(env.get(RESUMES) or []), entry]
    write_json(path, env)


__all__ = ["RESUMES", "COMPARED", "segments", "changed_keys", "numeric_paths", "numeric_path_of",
           "mixed_numeric_paths", "describe", "append_resume"]
