"""COCO 2017 preparation (download, verify, extract) and verification of any COCO-format folder.

``prepare_coco(root)`` downloads ``train2017.zip``, ``val2017.zip`` and
``annotations_trainval2017.zip`` into ``root/downloads/`` and extracts them into ``root`` (giving
``root/train2017/``, ``root/val2017/``, ``root/annotations/``):

* transfers resume with HTTP ``Range`` requests from ``NAME.part`` files (a failed transfer is
  retried a few times, then the error says to re-run the same command, which resumes);
* each archive is checked against its known size and MD5 checksum before it is used; a mismatch
  moves it to ``NAME.corrupt`` and says so;
* the free disk space is checked before downloading;
* extraction refuses entries that would escape ``root`` (absolute paths, ``..``, links);
* a marker ``root/.dynrcnn/<split>.done`` is written only after a verified, complete extraction, so
  re-running skips finished splits and never mistakes a half-extracted split for a finished one.

``verify_dataset(root)`` checks a COCO-format folder (COCO 2017 or the miniature benchmark).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from dynrcnn.errors import DataError

DEFAULT_BASE_URL = "http://images.cocodataset.org"

#: What ``dynrcnn data coco`` downloads: split name -> archive path under the base URL, size in
#: bytes, MD5, and about how many bytes it takes once extracted (for the disk-space check).
COCO2017_MANIFEST: dict[str, dict] = {
    "train2017": {"path": "zips/train2017.zip", "size": 19336861798,
                  "md5": "cced6f7f71b7629ddf16f17bbcfab6b2", "extracted_size": 19_400_000_000},
    "val2017": {"path": "zips/val2017.zip", "size": 815585330,
                "md5": "442b8da7639aecaf257c1dceb8ba8c80", "extracted_size": 820_000_000},
    "annotations": {"path": "annotations/annotations_trainval2017.zip", "size": 252907541,
                    "md5": "f4bbac642086de4f52a3fdda2de5fa2c", "extracted_size": 820_000_000},
}
DEFAULT_SPLITS = ("train2017", "val2017", "annotations")
CHUNK = 1 << 20
MARKER_DIR = ".dynrcnn"

_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
                   TimeoutError)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{int(n)} bytes"


def md5sum(path, chunk: int = CHUNK, progress: bool = False) -> str:
    h = hashlib.md5()
    size = os.path.getsize(path)
    with _bar(size, f"checking {Path(path).name}", progress) as bar, open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
            bar.update(len(b))
    return h.hexdigest()


def _bar(total, desc, progress, initial=0):
    """A byte progress bar; with ``progress=False`` a disabled (no-op) one."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not progress)


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"cannot write to {folder}: {e}; choose another --root or fix the folder's permissions") from e


def _marker(root: Path, split: str) -> Path:
    return root / MARKER_DIR / f"{split}.done"


def is_prepared(root, split: str, manifest: dict | None = None) -> bool:
    """True when ``split`` was downloaded, verified and fully extracted under ``root``."""
    manifest = COCO2017_MANIFEST if manifest is None else manifest
    m = _marker(Path(root), split)
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text()).get("md5") == manifest[split]["md5"]
    except (OSError, ValueError, KeyError):
        return False


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------

def download(url: str, dest, size: int | None, md5: str | None, progress: bool = True,
             retries: int = 3, timeout: float = 60.0, retry_wait: float = 2.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming, and verify size and MD5.

    On a checksum mismatch the file is moved to ``dest.corrupt`` and :class:`DataError` raised.
    On a network failure (after ``retries`` automatic resumes) the partial file is kept and the
    error says to re-run the same command.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _transfer(url, part, size, progress, timeout)
            break
        except _NETWORK_ERRORS + (OSError,) as e:
            if isinstance(e, OSError) and not isinstance(e, _NETWORK_ERRORS) and e.errno is not None \
                    and e.errno in (28,):  # ENOSPC
                raise DataError(f"the disk is full while writing {part}: {e}; free some space and "
                                "re-run the same command to resume") from e
            if isinstance(e, urllib.error.HTTPError) and e.code in (403, 404, 410):
                raise DataError(f"{url} answered HTTP {e.code} ({e.reason}); check --base-url "
                                "(the mirror must serve the same file names)") from e
            if isinstance(e, OSError) and not isinstance(e, _NETWORK_ERRORS):
                raise DataError(f"cannot write {part}: {e}; check the folder's permissions and free space, "
                                "then re-run the same command") from e
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                total = f" of {_gb(size)}" if size else ""
                raise DataError(
                    f"download of {url} failed after {_gb(have)}{total} ({type(e).__name__}: {e}); "
                    f"the partial file is kept at {part}: re-run the same command to resume") from e
            time.sleep(retry_wait)
    got = part.stat().st_size
    if size is not None and got != size:
        bad = _quarantine(part, dest)
        raise DataError(f"{url}: downloaded {got} bytes but expected {size}; the file was moved to {bad}; "
                        "delete it and re-run the same command (or check --base-url)")
    if md5 is not None:
        digest = md5sum(part, progress=progress)
        if digest != md5:
            bad = _quarantine(part, dest)
            raise DataError(f"checksum mismatch for {dest.name} from {url}: expected MD5 {md5}, got {digest}; "
                            f"the file was moved to {bad} (quarantined); delete it and re-run the same "
                            "command to download it again, or check --base-url")
    os.replace(part, dest)
    return dest


def _quarantine(part: Path, dest: Path) -> Path:
    bad = dest.with_name(dest.name + ".corrupt")
    os.replace(part, bad)
    return bad


def _transfer(url: str, part: Path, size: int | None, progress: bool, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    req = urllib.request.Request(url, headers={"User-Agent": "dynrcnn"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part file is already complete
            return
        raise
    with resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:  # the server ignored the Range header: start again
            have = 0
        mode = "ab" if have else "wb"
        total = size
        if total is None:
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
        with _bar(total, part.name[: -len(".part")], progress, initial=have) as bar, open(part, mode) as f:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        length = resp.headers.get("Content-Length")
        if size is None and length and length.isdigit() and part.stat().st_size < have + int(length):
            raise http.client.IncompleteRead(b"", int(length))
        if size is not None and part.stat().st_size < size:
            raise ConnectionError(f"connection closed after {part.stat().st_size} of {size} bytes")


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------

def check_archive(archive, target) -> list[zipfile.ZipInfo]:
    """Entries of a zip archive; :class:`DataError` if any would land outside ``target``."""
    target = Path(target).resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{archive} is not a readable zip archive ({e}); delete it and re-run the same command") from e
    with zf:
        infos = zf.infolist()
    for info in infos:
        name = info.filename
        p = PurePosixPath(name.replace("\\", "/"))
        mode = info.external_attr >> 16
        why = None
        if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            why = "an absolute path"
        elif ".." in p.parts:
            why = "a '..' component"
        elif stat.S_ISLNK(mode):
            why = "a symbolic link"
        elif not (target / p).resolve().is_relative_to(target):
            why = "a path outside the target folder"
        if why:
            raise DataError(f"refusing to extract {archive}: entry {name!r} is {why} and would escape {target}; "
                            "the archive is unsafe: delete it and download it from a trusted source")
    return infos


def extract(archive, target, progress: bool = True) -> int:
    """Extract a zip archive into ``target`` after :func:`check_archive`; returns the file count."""
    target = Path(target)
    infos = check_archive(archive, target)
    total = sum(i.file_size for i in infos)
    n = 0
    try:
        with _bar(total, f"extracting {Path(archive).name}", progress) as bar, zipfile.ZipFile(archive) as zf:
            for info in infos:
                zf.extract(info, target)  # CRC-checked on read
                if not info.is_dir():
                    n += 1
                bar.update(info.file_size)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"extracting {archive} into {target} failed: {e}; free space or fix permissions and "
                        "re-run the same command (the split is not marked as prepared)") from e
    return n


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------

def prepare_coco(root, base_url: str = DEFAULT_BASE_URL, splits=DEFAULT_SPLITS, manifest: dict | None = None,
                 keep_archives: bool = False, progress: bool = True, retries: int = 3,
                 timeout: float = 60.0, retry_wait: float = 2.0, log=print) -> dict:
    """Download, verify and extract COCO 2017 ``splits`` into ``root``; returns ``{split: status}``.

    ``manifest`` replaces :data:`COCO2017_MANIFEST` (tests serve their own small archives).
    Status is ``"skipped"`` (already prepared) or ``"prepared"``.
    """
    manifest = COCO2017_MANIFEST if manifest is None else manifest
    root = Path(root)
    url = urllib.parse.urlsplit(str(base_url))
    if url.scheme not in ("http", "https", "file") or (url.scheme != "file" and not url.netloc):
        raise DataError(f"--base-url {base_url!r} is not an http(s):// or file:// address; pass the mirror's "
                        f"address, e.g. {DEFAULT_BASE_URL}")
    unknown = [s for s in splits if s not in manifest]
    if unknown:
        raise DataError(f"unknown split(s) {unknown}; choose from {sorted(manifest)}")
    _ensure_writable(root)
    downloads = root / "downloads"
    _ensure_writable(downloads)
    (root / MARKER_DIR).mkdir(exist_ok=True)
    todo = [s for s in splits if not is_prepared(root, s, manifest)]
    status = {s: "skipped" for s in splits if s not in todo}
    for s in status:
        log(f"{s}: already downloaded, verified and extracted ({_marker(root, s)}); skipping")
    # disk space for everything still to do, checked before any transfer starts
    need = 0
    for s in todo:
        entry = manifest[s]
        name = PurePosixPath(entry["path"]).name
        archive = downloads / name
        part = archive.with_name(name + ".part")
        have = archive.stat().st_size if archive.exists() else part.stat().st_size if part.exists() else 0
        need += max(0, int(entry.get("size") or 0) - have) + int(entry.get("extracted_size", entry.get("size") or 0))
    if todo:
        free = shutil.disk_usage(root).free
        if free < need:
            raise DataError(f"not enough free disk space in {root}: {_gb(need)} needed for {', '.join(todo)} "
                            f"(download and extraction), {_gb(free)} free; free some space or choose another --root")
    for s in todo:
        entry = manifest[s]
        name = PurePosixPath(entry["path"]).name
        archive = downloads / name
        url = base_url.rstrip("/") + "/" + entry["path"].lstrip("/")
        if archive.exists():
            digest = md5sum(archive, progress=progress) if entry.get("md5") else None
            if entry.get("md5") and digest != entry["md5"]:
                bad = _quarantine(archive, archive)
                raise DataError(f"checksum mismatch for {archive}: expected MD5 {entry['md5']}, got {digest}; "
                                f"the file was moved to {bad} (quarantined); delete it and re-run the same command")
        else:
            log(f"{s}: downloading {url}")
            download(url, archive, entry.get("size"), entry.get("md5"), progress=progress, retries=retries,
                     timeout=timeout, retry_wait=retry_wait)
        log(f"{s}: extracting {archive} into {root}")
        n = extract(archive, root, progress=progress)
        _marker(root, s).write_text(json.dumps({"split": s, "md5": entry.get("md5"), "files": n,
                                                "archive": entry["path"]}, sort_keys=True) + "\n")
        if not keep_archives:
            archive.unlink()
        status[s] = "prepared"
        log(f"{s}: done ({n} files)")
    return status


# --------------------------------------------------------------------------------------------
# verification of any COCO-format folder
# --------------------------------------------------------------------------------------------

def verify_split(root, split: str, check_images: bool = True, progress: bool = False) -> tuple[dict, list[str]]:
    """Check one split; returns ``(summary, problems)`` where ``problems`` is a list of messages.

    Every image listed must exist; with ``check_images`` it must also decode completely and have
    the width and height its annotation entry gives."""
    from PIL import Image

    from dynrcnn.data.datasets import annotation_file, load_annotations

    root = Path(root)
    ann = annotation_file(root, split)
    summary = {"split": split, "images": 0, "annotations": 0, "classes": 0}
    try:
        data = load_annotations(ann)
    except DataError as e:
        return summary, [str(e)]
    summary.update(images=len(data["images"]), annotations=len(data["annotations"]),
                   classes=len(data["categories"]))
    problems: list[str] = []
    image_dir = root / split
    if not image_dir.is_dir():
        return summary, [f"image folder {image_dir} (for {ann}) does not exist; download or generate the images"]
    from dynrcnn.data.datasets import _entry, _list_files, image_size_problem

    present = _list_files(image_dir)
    from tqdm import tqdm

    for i, im in enumerate(tqdm(data["images"], desc=f"verifying {split}", unit="img", disable=not progress)):
        path = image_dir / im["file_name"]
        if im["file_name"] not in present and not path.is_file():
            problems.append(f"{ann}: {_entry('images', i, im)}: image file {path} is missing")
        elif check_images:
            try:
                with Image.open(path) as f:
                    size = f.size
                    f.load()  # decodes every pixel (verify() reads the header only)
                problem = image_size_problem(path, size, im["width"], im["height"])
            except Exception as e:  # PIL raises many types for broken files
                problem = f"image file {path} is not readable ({e})"
            if problem:
                problems.append(f"{ann}: {_entry('images', i, im)}: {problem}")
        if len(problems) >= 20:
            problems.append("(stopping after 20 problems)")
            break
    return summary, problems


def verify_dataset(root, splits=None, check_images: bool = True, progress: bool = False,
                   out=None) -> bool:
    """Verify ``splits`` of a COCO-format folder (default: every ``annotations/instances_*.json``).

    Prints a summary and every problem found; returns True when there is none.
    """
    out = sys.stdout if out is None else out
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; check --root")
    if not splits:
        splits = sorted(p.name[len("instances_"):-len(".json")]
                        for p in (root / "annotations").glob("instances_*.json"))
        if not splits:
            raise DataError(f"{root} holds no annotations/instances_<split>.json; is --root a COCO-format folder?")
    ok = True
    print(f"{'split':<12}{'images':>9}{'annotations':>13}{'classes':>9}  status", file=out)
    for split in splits:
        summary, problems = verify_split(root, split, check_images=check_images, progress=progress)
        print(f"{split:<12}{summary['images']:>9}{summary['annotations']:>13}{summary['classes']:>9}  "
              f"{'ok' if not problems else 'PROBLEMS'}", file=out)
        for p in problems:
            print(f"  problem: {p}", file=out)
        ok = ok and not problems
    return ok
