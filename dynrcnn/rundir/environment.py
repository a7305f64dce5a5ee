"""The environment a report ran in, against the lock it should have run in.

``requirements.lock`` (``make lock``, docs/environment.md) pins every package the report of record
ran with; ``make`` installs exactly that set. A report regenerated elsewhere may still run with
other versions (an older checkout's venv, a conda environment, ``pip install -e .`` from the
ranges), and a change of torch's kernels, numpy's RNG or pycocotools' matching moves the numbers
without a word. This module says which:

- :func:`numeric_versions`: the versions of the packages that change numbers
  (:data:`NUMERIC_PACKAGES`), the CPU model and the numeric path a run takes here;
- :func:`lock_mismatches`: every locked package whose installed version differs from the lock;
- :func:`environment_sentence`: one line for the summary page, naming the packages that differ;
- :func:`environment_record`: all three as one JSON-ready dict (for ``results.json``).

Versions are read from the installed distributions' metadata (:mod:`importlib.metadata`), so a
lock check imports nothing; only the numeric path imports torch.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

#: the packages whose version changes the report's numbers (distribution names, PEP 503 form)
NUMERIC_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pycocotools", "faster-coco-eval", "pillow")

#: the lock ``make`` installs, at the root of a checkout (absent from a non-editable install)
LOCK_NAME = "requirements.lock"

#: torch minor release -> the torchvision minor release built against it: the table of
#: torchvision's README (its "Installation" section, as shipped with torchvision 0.29.1, which
#: lists up to 2.13), plus 2.14 <-> 0.29 (torchvision 0.29.1's own metadata requires torch>=2.14.0)
TORCHVISION_FOR_TORCH = {
    "2.14": "0.29", "2.13": "0.28", "2.12": "0.27", "2.11": "0.26", "2.10": "0.25",
    "2.9": "0.24", "2.8": "0.23", "2.7": "0.22", "2.6": "0.21", "2.5": "0.20", "2.4": "0.19",
    "2.3": "0.18", "2.2": "0.17", "2.1": "0.16", "2.0": "0.15",
}

#: how many differing packages the sentence names before "and N more"
SENTENCE_LIMIT = 8


class Mismatch(NamedTuple):
    """A locked package installed at another version (``installed`` None: not installed)."""

    name: str
    installed: str | None
    locked: str


def canonical_name(name: str) -> str:
    """A distribution name in PEP 503 form (``Pillow`` and ``faster_coco_eval`` as the lock spells them)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def default_lock_path() -> Path:
    """``requirements.lock`` at the root of the checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / LOCK_NAME


def parse_lock(path) -> dict[str, str]:
    """``{name: version}`` of every ``name==version`` line of a lock (hashes, comments and
    annotations skipped; names in PEP 503 form)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            pins[canonical_name(m.group(1))] = m.group(2)
    return pins


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def same_version(a: str | None, b: str | None) -> bool:
    """Whether two version strings name the same release (``1.0`` == ``1.0.0``; a local label such
    as ``+cu130`` counts: another build is another binary)."""
    if a is None or b is None:
        return a == b
    try:
        from packaging.version import Version

        return Version(a) == Version(b)
    except Exception:  # an unparsable version: compare the text
        return a == b


def torchvision_matches(torch_version: str, torchvision_version: str) -> bool | None:
    """Whether a torch / torchvision pair is one torchvision's README lists (minor releases);
    None for a torch release the table does not know."""
    def minor(v):
        return ".".join(v.split("+")[0].split(".")[:2])

    expected = TORCHVISION_FOR_TORCH.get(minor(torch_version))
    return None if expected is None else minor(torchvision_version) == expected


def _cpuinfo(key: str) -> str | None:
    """The first ``key`` line's value of ``/proc/cpuinfo`` (None off Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), as ``env.json``
    records it."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine() or "cpu"


def machine_line(load: float, name: str | None = None, cores: int | None = None) -> str:
    """How a measurement names the machine it ran on: ``"<CPU> (<n> cores, load average <l> at the
    start)"``; ``load``: ``os.getloadavg()[0]`` when the measurement began (above 0: other work
    shared the cores). ``name`` and ``cores`` default to this machine's (a record's, when given)."""
    return f"{name or cpu_model()} ({cores or os.cpu_count()} cores, load average {load:.1f} at the start)"


def numeric_path(device, amp_dtype) -> str:
    """The numeric path a forward runs on, which decides a run's numbers bit for bit (what
    ``env.json`` records): ``fp32``; ``bf16 (AMX)`` or ``bf16 (AVX512-BF16)`` on a CPU (oneDNN takes
    other kernels on each, :func:`dynrcnn.modeling.model.cpu_has_bf16`; ``bf16 (oneDNN)`` when the
    CPU lists neither flag); ``<dtype> (CUDA)`` on a GPU. ``device``: a ``torch.device`` or its type."""
    kind = getattr(device, "type", str(device).split(":")[0])
    dtype = "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", "").replace("bfloat16", "bf16") \
        .replace("float16", "fp16")
    if kind == "cuda":
        return f"{dtype} (CUDA)"
    if amp_dtype is None:
        return "fp32"
    flags = set((_cpuinfo("flags") or "").split())
    isa = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "oneDNN"
    return f"{dtype} ({isa})"


def cpu_numeric_path(amp: str = "bf16") -> str:
    """The numeric path a CPU run with ``amp`` takes here (:func:`numeric_path` of the dtype
    :func:`dynrcnn.modeling.model.autocast_dtype` picks: bf16 only where oneDNN has bf16 hardware)."""
    from dynrcnn.modeling.model import autocast_dtype

    return numeric_path("cpu", autocast_dtype("cpu", amp))


def numeric_versions(amp: str = "bf16") -> dict:
    """The versions of :data:`NUMERIC_PACKAGES` (None where not installed), Python's, the CPU
    model, whether oneDNN has bf16 hardware here and the CPU numeric path of a run with ``amp``
    (the report of record's presets use ``bf16``)."""
    import platform

    from dynrcnn.modeling.model import cpu_has_bf16

    out = {name: installed_version(name) for name in NUMERIC_PACKAGES}
    out["python"] = platform.python_version()
    out["cpu_model"] = cpu_model()
    out["cpu_bf16"] = cpu_has_bf16()
    out["numeric_path"] = cpu_numeric_path(amp)
    return out


def lock_mismatches(lock_path=None) -> list[Mismatch]:
    """The locked packages whose installed version differs from the lock (``lock_path``, default
    :func:`default_lock_path`), the :data:`NUMERIC_PACKAGES` first, then by name. ``[]``: the
    environment has every locked version. Packages installed but not locked (dynrcnn itself, an
    extra such as jupyter) are not compared."""
    pins = parse_lock(default_lock_path() if lock_path is None else lock_path)
    out = [Mismatch(name, installed, locked) for name, locked in pins.items()
           if not same_version(installed := installed_version(name), locked)]
    order = {name: i for i, name in enumerate(NUMERIC_PACKAGES)}
    return sorted(out, key=lambda m: (order.get(m.name, len(order)), m.name))


def environment_sentence(mismatches: list[Mismatch] | None, lock_name: str = LOCK_NAME) -> str:
    """One line for the summary page: ``ran with the locked environment (requirements.lock)``, or
    ``ran with versions other than the lock: torch 2.13.0 (lock 2.14.1), ...`` (at most
    :data:`SENTENCE_LIMIT` named, then ``and N more``); ``mismatches`` None: no lock to compare."""
    if mismatches is None:
        return f"ran without a lock to compare with ({lock_name} not found)"
    if not mismatches:
        return f"ran with the locked environment ({lock_name})"
    named = [f"{m.name} {m.installed or 'not installed'} (lock {m.locked})" for m in mismatches[:SENTENCE_LIMIT]]
    more = len(mismatches) - SENTENCE_LIMIT
    return "ran with versions other than the lock: " + ", ".join(named) + (f" and {more} more" if more > 0 else "")


def environment_record(lock_path=None, amp: str = "bf16") -> dict:
    """What ``results.json`` records of the environment: ``versions`` (:func:`numeric_versions`),
    ``lock`` (the file's name, None when absent), ``lock_mismatches`` (``[name, installed,
    locked]`` lists) and ``sentence`` (:func:`environment_sentence`)."""
    path = Path(default_lock_path() if lock_path is None else lock_path)
    mismatches = lock_mismatches(path) if path.is_file() else None
    return {"versions": numeric_versions(amp), "lock": path.name if path.is_file() else None,
            "lock_mismatches": None if mismatches is None else [list(m) for m in mismatches],
            "sentence": environment_sentence(mismatches, path.name)}


__all__ = ["machine_line", "NUMERIC_PACKAGES", "TORCHVISION_FOR_TORCH", "Mismatch", "canonical_name", "default_lock_path",
           "parse_lock", "installed_version", "torchvision_matches", "cpu_model", "numeric_path", "cpu_numeric_path", "numeric_versions",
           "lock_mismatches", "environment_sentence", "environment_record"]
