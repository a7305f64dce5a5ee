"""COCO 2017 preparation against a loopback HTTP server serving tiny archives; dataset verify."""

import argparse
import hashlib
import io
import json
import shutil
import threading
import zipfile
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dynrcnn.data import coco
from dynrcnn.data.coco import check_archive, prepare_coco, verify_dataset
from dynrcnn.data.datasets import CocoDetection
from dynrcnn.errors import DataError
from dynrcnn.data.mini import generate_mini


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: dict = {}
    drop_once: set = set()
    log: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.log.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes="):-1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.path in self.drop_once:
            self.drop_once.discard(self.path)
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture()
def server():
    handler = type("Handler", (_Handler,), {"files": {}, "drop_once": set(), "log": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _zip(entries: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """A tiny COCO-2017-like pair of archives made from a 5-image miniature val split."""
    src = tmp_path_factory.mktemp("src")
    generate_mini(src, n_train=0, n_val=5, image_size=48, workers=0, progress=False)
    images = {f"val2017/{p.name}": p.read_bytes() for p in sorted((src / "val").glob("*.png"))}
    ann = {"annotations/instances_val2017.json": (src / "annotations" / "instances_val.json").read_bytes()}
    return {"val2017": _zip(images), "annotations": _zip(ann)}


def _manifest(archives, **override):
    m = {}
    paths = {"val2017": "zips/val2017.zip", "annotations": "annotations/annotations_trainval2017.zip"}
    for split, data in archives.items():
        m[split] = {"path": paths[split], "size": len(data), "md5": hashlib.md5(data).hexdigest(),
                    "extracted_size": len(data)}
    for split, fields in override.items():
        m[split].update(fields)
    return m


def _serve(handler, archives, manifest):
    for split, data in archives.items():
        handler.files["/" + manifest[split]["path"]] = data


def _prepare(root, url, manifest, **kw):
    kw.setdefault("retry_wait", 0)
    return prepare_coco(root, base_url=url, splits=list(manifest), manifest=manifest, progress=False,
                        log=lambda *a: None, **kw)


def test_download_verify_extract_and_idempotent(tmp_path, server, archives):
    handler, url = server
    m = _manifest(archives)
    _serve(handler, archives, m)
    root = tmp_path / "coco"
    assert _prepare(root, url, m) == {"val2017": "prepared", "annotations": "prepared"}
    assert sorted(p.name for p in (root / "val2017").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    assert (root / ".dynrcnn" / "val2017.done").is_file()
    assert not list((root / "downloads").iterdir())  # archives deleted after extraction
    out = io.StringIO()
    assert verify_dataset(root, ["val2017"], out=out)
    assert "val2017" in out.getvalue() and "ok" in out.getvalue()
    ds = CocoDetection(root, "val2017", train=False)
    assert len(ds) == 5
    # a second run transfers nothing and changes nothing
    n_requests = len(handler.log)
    assert _prepare(root, url, m) == {"val2017": "skipped", "annotations": "skipped"}
    assert len(handler.log) == n_requests


def test_interrupted_transfer_resumes(tmp_path, server, archives):
    handler, url = server
    m = _manifest(archives)
    _serve(handler, archives, m)
    handler.drop_once.add("/zips/val2017.zip")
    root = tmp_path / "coco"
    with pytest.raises(DataError, match="re-run the same command to resume") as e:
        _prepare(root, url, m, retries=0)
    part = root / "downloads" / "val2017.zip.part"
    assert str(part) in str(e.value)
    size = len(archives["val2017"])
    assert 0 < part.stat().st_size < size
    assert not (root / ".dynrcnn" / "val2017.done").exists()
    have = part.stat().st_size
    assert _prepare(root, url, m)["val2017"] == "prepared"
    assert ("/zips/val2017.zip", f"bytes={have}-") in handler.log  # resumed, not restarted
    assert verify_dataset(root, ["val2017"], out=io.StringIO())


def test_automatic_retry_resumes_in_one_run(tmp_path, server, archives):
    handler, url = server
    m = _manifest(archives)
    _serve(handler, archives, m)
    handler.drop_once.add("/zips/val2017.zip")
    assert _prepare(tmp_path, url, m, retries=2)["val2017"] == "prepared"
    assert any(p == "/zips/val2017.zip" and r for p, r in handler.log)


def test_checksum_mismatch_quarantines(tmp_path, server, archives):
    handler, url = server
    m = _manifest(archives, val2017={"md5": "0" * 32})
    _serve(handler, archives, m)
    with pytest.raises(DataError) as e:
        _prepare(tmp_path, url, m)
    msg = str(e.value)
    assert "checksum mismatch" in msg and "val2017.zip.corrupt" in msg and "quarantined" in msg
    assert (tmp_path / "downloads" / "val2017.zip.corrupt").is_file()
    assert not (tmp_path / "downloads" / "val2017.zip.part").exists()
    assert not (tmp_path / "downloads" / "val2017.zip").exists()
    assert not (tmp_path / "val2017").exists()
    assert not (tmp_path / ".dynrcnn" / "val2017.done").exists()


def test_unsafe_archive_refused(tmp_path, server, archives):
    handler, url = server
    evil = _zip({"val2017/ok.png": b"x", "../evil.txt": b"pwned"})
    bad = {"val2017": evil}
    m = _manifest(bad)
    _serve(handler, bad, m)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="refusing to extract.*'../evil.txt'"):
        _prepare(root, url, m)
    assert not (tmp_path / "evil.txt").exists()
    assert not (root / "val2017").exists()  # nothing extracted, nothing marked done
    assert not (root / ".dynrcnn" / "val2017.done").exists()


def test_check_archive_refuses_absolute_paths_and_links(tmp_path):
    a = tmp_path / "abs.zip"
    a.write_bytes(_zip({"/etc/evil": b"x"}))
    with pytest.raises(DataError, match="absolute path"):
        check_archive(a, tmp_path / "t")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("val2017/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    link = tmp_path / "link.zip"
    link.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="symbolic link"):
        check_archive(link, tmp_path / "t")
    nozip = tmp_path / "no.zip"
    nozip.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable zip"):
        check_archive(nozip, tmp_path)


def test_disk_space_checked_before_download(tmp_path, server, archives, monkeypatch):
    handler, url = server
    m = _manifest(archives)
    _serve(handler, archives, m)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(coco.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 100, 100))
    with pytest.raises(DataError, match="not enough free disk space") as e:
        _prepare(tmp_path, url, m)
    assert str(tmp_path) in str(e.value)
    assert handler.log == []  # nothing was requested


def test_unwritable_root(tmp_path, server, archives):
    handler, url = server
    m = _manifest(archives)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot write to"):
        _prepare(blocker / "coco", url, m)


def test_missing_file_on_server_names_base_url(tmp_path, server, archives):
    handler, url = server
    m = _manifest(archives)
    with pytest.raises(DataError, match="HTTP 404.*--base-url"):
        _prepare(tmp_path, url, m)


def test_unreachable_server_says_resume(tmp_path, archives):
    m = _manifest(archives)
    with pytest.raises(DataError, match="re-run the same command to resume"):
        _prepare(tmp_path, "http://127.0.0.1:9", m, retries=0, timeout=5)


# -------------------------------------------------------------------------------------------- verify

@pytest.fixture()
def good_folder(tmp_path):
    generate_mini(tmp_path, n_train=3, n_val=2, image_size=48, workers=0, progress=False)
    return tmp_path


def test_verify_good_and_broken(good_folder):
    out = io.StringIO()
    assert verify_dataset(good_folder, out=out)
    text = out.getvalue()
    assert "train" in text and "val" in text and "PROBLEMS" not in text
    (good_folder / "val" / "000001.png").unlink()
    (good_folder / "train" / "000002.png").write_bytes(b"broken")
    out = io.StringIO()
    assert not verify_dataset(good_folder, out=out)
    text = out.getvalue()
    assert "images[1] (id 2)" in text and "000001.png is missing" in text
    assert "images[2] (id 3)" in text and "not readable" in text


def test_verify_bad_json_and_cli(good_folder, capsys):
    from dynrcnn.cli import data as cli_data

    ann = good_folder / "annotations" / "instances_val.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [1, 2]
    ann.write_text(json.dumps(data))
    parser = argparse.ArgumentParser(prog="dynrcnn")
    cli_data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "verify", "--root", str(good_folder), "--quiet"])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert str(ann) in out and "annotations[0] (id 1)" in out
    args = parser.parse_args(["data", "verify", "--root", str(good_folder), "--splits", "train", "--quiet"])
    assert args.func(args) == 0
    with pytest.raises(DataError, match="does not exist"):
        verify_dataset(good_folder / "nope")


def test_cli_coco_parses(tmp_path):
    from dynrcnn.cli import data as cli_data

    parser = argparse.ArgumentParser(prog="dynrcnn")
    cli_data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "coco", "--root", str(tmp_path), "--splits", "val2017", "annotations"])
    assert args.splits == ["val2017", "annotations"] and args.base_url == coco.DEFAULT_BASE_URL
    assert callable(args.func)
    assert shutil.disk_usage(tmp_path).free > 0
