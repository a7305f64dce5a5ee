"""Issue 11: run directories and datasets that cannot be silently damaged (provenance, tagged
evaluations, immutable training record, overwrite refusals, locks, atomic data, one-line errors)."""

import json
import shutil

import pytest

from dynrcnn import runs
from dynrcnn.engine import train
from dynrcnn.errors import DynrcnnError
from dynrcnn.evaluation import evaluate
from tests.test_engine import tiny_cfg


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from dynrcnn.mini import generate_mini

    root = tmp_path_factory.mktemp("integrity") / "mini"
    generate_mini(root, seed=0, n_train=12, n_val=4, image_size=64, workers=0, progress=False)
    return root


@pytest.fixture(scope="module")
def done_run(data_root, tmp_path_factory):
    """A finished, evaluated 4-iteration run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("integrity_run") / "run"
    return train(tiny_cfg(data_root, "max_iter=4", "eval_at_end=true"), out, progress=False)


def snapshot(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_records_data_provenance(done_run, data_root):
    from dynrcnn.weights import file_sha256

    rec = json.loads((done_run / runs.CONFIG).read_text())[runs.DATA_RECORD]
    assert rec == {"data_root": str(data_root.resolve()), "split": "train",
                   "annotation_sha256": file_sha256(data_root / "annotations" / "instances_train.json")}
    ev = json.loads(runs.eval_file(done_run).read_text())
    assert ev["data_root"] == str(data_root.resolve()) and ev["split"] == "val"
    assert ev["annotation_sha256"] == file_sha256(data_root / "annotations" / "instances_val.json")
    runs.read_config(done_run)  # the extra record does not break reading the config back


def test_eval_on_other_data_never_replaces_the_runs_own(done_run, data_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(done_run, run)
    other = tmp_path / "other data!"
    shutil.copytree(data_root, other)
    own_eval, own_dets = runs.eval_file(run).read_bytes(), runs.detections_file(run).read_bytes()

    ev = evaluate(run, data_root=other)
    assert runs.eval_file(run).read_bytes() == own_eval and runs.detections_file(run).read_bytes() == own_dets
    tagged = run / "eval-other_data.json"
    assert tagged.is_file() and (run / "detections-other_data.json").is_file()
    assert json.loads(tagged.read_text())["data_root"] == str(other.resolve()) and ev["split"] == "val"
    r = runs.load_run(run)
    assert r.eval_names == ["other_data"] and r.eval_on("other_data")["AP"] == ev["AP"]
    assert r.eval_on("nope") is None and r.eval_on(None) == r.eval
    assert r.detections_path("other_data") == run / "detections-other_data.json"
    assert runs.read_detections(run, "other_data") == json.loads((run / "detections-other_data.json").read_text())

    # the run's own data (another spelling of the same folder) still writes eval.json
    evaluate(run, data_root=str(data_root) + "/.")
    assert json.loads(runs.eval_file(run).read_text())["data_root"] == str(data_root.resolve())
    # name= forces the tag
    evaluate(run, data_root=other, name="my tag")
    assert (run / "eval-my_tag.json").is_file()
    # another folder with the same name is refused rather than replacing eval-other_data.json
    twin = tmp_path / "x" / "other data!"
    shutil.copytree(data_root, twin)
    with pytest.raises(DynrcnnError, match="already holds results on .*--name"):
        evaluate(run, data_root=twin)
    assert json.loads(tagged.read_text())["data_root"] == str(other.resolve())


# ---- data mini: fresh temporary folder, atomic publish, foreign files refused


def test_mini_refuses_a_folder_with_foreign_files(tmp_path):
    from dynrcnn.errors import DataError
    from dynrcnn.mini import generate_mini

    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    (out / "train" / "holiday.png").write_bytes(b"not ours")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(DataError, match=r"did not write \(notes.txt, 2 in all\)"):
        generate_mini(out, n_train=2, n_val=1, image_size=64, workers=0, progress=False)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # an earlier benchmark is replaced (the earlier test_mini test covers a smaller one)
    fresh = tmp_path / "fresh"
    generate_mini(fresh, n_train=2, n_val=1, image_size=64, workers=0, progress=False)
    generate_mini(fresh, seed=5, n_train=2, n_val=1, image_size=64, workers=0, progress=False)
    assert json.loads((fresh / "annotations" / "instances_val.json").read_text())["info"]["seed"] == 5


def test_mini_interrupted_leaves_the_target_as_it_was(tmp_path, monkeypatch):
    from dynrcnn import mini

    out = tmp_path / "data"
    mini.generate_mini(out, n_train=3, n_val=2, image_size=64, workers=0, progress=False)
    before = snapshot(out)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mini, "_coco_dict", boom)  # stops after every image was drawn
    with pytest.raises(KeyboardInterrupt):
        mini.generate_mini(out, seed=9, n_train=3, n_val=2, image_size=64, workers=0, progress=False)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left


# ---- image sizes: verify decodes every image and checks its size; loading checks it too


def test_image_size_checked_by_verify_and_at_load_time(tmp_path, capsys):
    from PIL import Image

    from dynrcnn.coco import verify_dataset
    from dynrcnn.data import load_dataset
    from dynrcnn.errors import DataError
    from dynrcnn.mini import generate_mini

    root = tmp_path / "d"
    generate_mini(root, n_train=2, n_val=2, image_size=64, workers=0, progress=False)
    assert verify_dataset(root, progress=False)
    Image.new("RGB", (80, 64)).save(root / "val" / "000001.png")  # other size than annotated
    (root / "train" / "000000.png").write_bytes((root / "train" / "000000.png").read_bytes()[:200])  # truncated
    capsys.readouterr()
    assert not verify_dataset(root, progress=False)
    out = capsys.readouterr().out
    assert "images[1] (id 2): image file" in out and "is 80x64 px but its annotation says 64x64" in out
    assert "images[0] (id 1): image file" in out and "not readable" in out
    ds = load_dataset(root, "val", train=False)
    with pytest.raises(DataError, match=r"image id 2: .* is 80x64 px but its annotation says 64x64"):
        ds[1]
