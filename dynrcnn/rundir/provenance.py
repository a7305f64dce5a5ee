"""The provenance of the data a run read or was evaluated on: what a run records of its
training data (:func:`data_record`, checked against other data by :func:`check_class_names`),
and where an evaluation on other data goes (:func:`eval_tag`, :func:`check_eval_target`).

File names come from :mod:`dynrcnn.rundir.runs`; this module spells none.
"""

from __future__ import annotations

from pathlib import Path

from dynrcnn.errors import DataError, DynrcnnError
from dynrcnn.rundir.runs import CONFIG, eval_file, sanitise_tag
from dynrcnn.io import read_json


def data_record(dataset) -> dict:
    """What a run records of the data it read (a :class:`~dynrcnn.data.datasets.CocoDetection`):
    ``data_root`` (resolved), ``split``, the SHA-256 of the annotation file and the class names in
    label order (the names travel with the model: ``dynrcnn predict``, and ``eval`` refuses data
    with other names)."""
    from dynrcnn.io import file_sha256

    return {"data_root": str(Path(dataset.root).expanduser().resolve()), "split": dataset.split,
            "annotation_sha256": file_sha256(dataset.annotation_file), "class_names": list(dataset.class_names)}


def check_class_names(recorded: list[str] | None, dataset, source) -> None:
    """Refuse ``dataset`` when its class names differ from the ``recorded`` ones (``source``: the
    file that records them), naming the first mismatch; nothing to check without a record."""
    if not recorded:
        return
    have = list(dataset.class_names)
    if have == list(recorded):
        return
    if len(have) != len(recorded):
        what = f"{len(have)} classes, the model {len(recorded)}"
    else:
        k = next(i for i, (a, b) in enumerate(zip(recorded, have)) if a != b)
        what = f"class {k + 1} is {have[k]!r}, the model's is {recorded[k]!r}"
    raise DataError(f"{dataset.annotation_file} has other classes than the model ({what}; the model's are in "
                    f"{source}); evaluate on data with the run's categories, or pass --allow-class-mismatch")


def same_path(a, b) -> bool:
    """Whether two paths name the same place (``~`` expanded, resolved)."""
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def eval_tag(run_dir, data_root) -> str | None:
    """``None`` when ``data_root`` is the run's own data (``config.json``), else the data
    folder's name, sanitised: the tag of ``eval-<name>.json``."""
    if data_root is None:
        return None
    own = (read_json(Path(run_dir) / CONFIG) or {}).get("data_root")
    if own and same_path(own, data_root):
        return None
    return sanitise_tag(Path(data_root).expanduser().resolve().name)


def check_eval_target(run_dir, name: str | None, data: dict) -> None:
    """Refuse to replace ``eval-<name>.json`` that holds results on other data (two data
    folders with the same name)."""
    if name is None:
        return
    path = eval_file(run_dir, name)
    held = (read_json(path) or {}).get("data_root")
    if held and not same_path(held, data["data_root"]):
        raise DynrcnnError(f"{path.name} already holds results on {held}, not {data['data_root']} ({path}); "
                           "pass --name to store this evaluation under another name")
