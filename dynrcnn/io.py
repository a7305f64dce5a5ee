"""Files and paths every layer shares: atomic writes, JSON and JSON-lines, file hashes, how a
path is shown (relative to the working folder or the checkout, never a machine path)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dynrcnn.errors import DynrcnnError

def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def checked_file(path: str | Path, sha256: str, name: str, hint: str, error: type = DynrcnnError) -> Path:
    """``path`` when it exists with the SHA-256 ``sha256``, else ``error`` naming the file
    (``name``: what it should be) and ending with ``hint`` (what to do)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{shown_path(path)} not found; {hint}")
    got = file_sha256(path)
    if got != sha256:
        raise error(f"{shown_path(path)} has SHA-256 {got[:12]}..., not the pinned {sha256[:12]}... of {name}; {hint}")
    return path


#: the checkout the package runs from (paths inside it are shown relative to it)
CHECKOUT = Path(__file__).resolve().parent.parent


def relative_path(p, *bases) -> str:
    """``p`` relative to the first of ``bases`` that holds it (POSIX form, "." for the base
    itself), else absolute. Symbolic links are not followed: a path is shown as it was given."""
    p = Path(os.path.abspath(Path(str(p)).expanduser()))
    for base in bases:
        base = Path(os.path.abspath(base))
        if p == base or base in p.parents:
            return p.relative_to(base).as_posix() or "."
    return str(p)


def shown_path(p) -> str:
    """``p`` as a message, a table or a rendered page shows it: relative to the working folder
    when inside it, else to the checkout when inside it, else absolute; so a report names no
    machine path and can be shared as it is."""
    return relative_path(p, Path.cwd(), CHECKOUT)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old or the new file; a
    failed write leaves no temporary file behind (and :class:`DynrcnnError` says why)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise DynrcnnError(f"cannot write {path.name} ({path}): {e.strerror or e}; "
                               "free disk space or fix the folder's permissions, then resume") from e
        raise


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON, atomically (numpy scalars and paths converted)."""
    text = json.dumps(obj, indent=indent, default=_json_default) + ("\n" if indent is not None else "")
    atomic_write_bytes(Path(path), text.encode())


def truncate_jsonl(path: Path, iteration: int) -> None:
    """Keep only the lines of a JSON-lines log whose ``iteration`` is <= ``iteration``
    (dropping a torn last line)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(rec.get("iteration", 0)) <= iteration:
            kept.append(line)
    atomic_write_bytes(path, "".join(k + "\n" for k in kept).encode())


class JsonlWriter:
    """Append-only JSON-lines file (flushed after every record); ``path=None`` is a no-op
    (the writer of ranks other than 0)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._f = open(path, "a") if path is not None else None

    def write(self, record: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record, default=_json_default) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file ([] if missing; a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or ``None`` when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
