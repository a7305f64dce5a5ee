"""The search for a benchmark where the paper's premise holds (issue 32), on baseline runs only.

For each :class:`Candidate` (generator settings of :class:`~dynrcnn.data.mini.MiniSettings` and
recipe overrides), :func:`search_candidate` draws the candidate's benchmark on the search's data seed
(:data:`SEARCH_DATA_SEED`), trains the *baseline* at the fixed R-CNN thresholds 0.5 / 0.6 / 0.7 with
each seed (``model.fg_iou_thresh``; never Dynamic R-CNN, DLA or DSL: a candidate is chosen without
looking at the method under test), measures the targets (a)-(d) of :mod:`dynrcnn.evaluation.premise`
and appends one line to the candidates record (``docs/premise_candidates.jsonl``), from which the
table in ``docs/premise.md`` is rewritten. Finished runs are reused, an interrupted one resumes, so a
killed search continues where it stopped. ``dynrcnn premise search`` is the command line.

Every run logs every ``max_iter // 100`` iterations (so that the first 1 % of training is a window of
its own) with ``log_stats=true`` (the proposal-IoU histograms of target (c)).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dynrcnn.errors import ConfigError, DynrcnnError
from dynrcnn.evaluation.premise import THRESHOLDS, TARGETS, measure

#: the data seed candidate benchmarks are drawn with: not the report's 0, the pretraining's 1 or the
#: evaluation benchmark's 2; the frozen benchmark's test (issue 32, step 3) draws a fresh one
SEARCH_DATA_SEED = 3
PRESET = "mini"  # the preset every candidate's runs (and the frozen benchmark's test) train
DEFAULT_SEEDS = (0, 1, 2)
RECORD = "docs/premise_candidates.jsonl"
PAGE = "docs/premise.md"
TAG = "PREMISE-CANDIDATES"
FORBIDDEN_KEYS = ("method",)  # a candidate's overrides may not change the method under test
#: every candidate's runs: RPN NMS 0.85, as the controls (docs/controls.md) and Dynamic R-CNN's
#: published runs, so that the fixed thresholds are measured as the frozen benchmark's test will train them
BASE_OVERRIDES = ("model.rpn_nms_thresh=0.85",)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A candidate benchmark: a name, what it changes and why, the generator settings (keys of
    :class:`~dynrcnn.data.mini.MiniSettings`) and ``--set`` overrides of the recipe."""

    name: str
    description: str
    generator: dict = dataclasses.field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    def settings(self):
        from dynrcnn.data.mini import MiniSettings

        return MiniSettings.from_dict(dict(self.generator))

    def check(self) -> None:
        self.settings()
        for item in self.overrides:
            if item.split("=", 1)[0].strip() in FORBIDDEN_KEYS:
                raise ConfigError(f"candidate {self.name}: '{item}' changes the method; the search trains "
                                  "baselines at fixed thresholds only")


_DENSE = {"min_objects": 4, "max_objects": 12, "max_occluded": 0.4}
_CLUTTERED = {**_DENSE, "distractors": 3, "n_classes": 12}
_SIZES = {**_CLUTTERED, "size_mix": (0.41, 0.34, 0.25), "large_max": 0.7}
_HARD = {**_SIZES, "min_contrast": 60.0, "background_contrast": 0.8, "noise_max": 8.0, "clutter_max": 6}

#: the candidates, declared before any of them ran; each moves one step further toward COCO
CANDIDATES: dict[str, Candidate] = {c.name: c for c in (
    Candidate("c0_current", "today's benchmark (format 4), the control: (a) is known to be absent"),
    Candidate("c1_dense", "4-12 objects per image (COCO: 7.7), up to 40 % hidden", _DENSE),
    Candidate("c2_clutter", "c1 with up to 3 distractor shapes per image that are no class, and 12 classes",
              _CLUTTERED),
    Candidate("c3_sizes", "c2 with COCO's size mix (41/34/25 %) and large objects up to 70 % of the image",
              _SIZES),
    Candidate("c4_hard", "c3 with weak contrast, full-contrast backgrounds, more clutter and noise", _HARD),
    Candidate("c5_hard_recipe", "c4 with the paper's proposal and RoI counts (1000 proposals, 512 RoIs per image)",
              _HARD, ("model.rpn_post_nms_top_n_train=1000", "model.rpn_pre_nms_top_n_test=1000",
                      "model.rpn_post_nms_top_n_test=1000", "model.box_batch_size_per_image=512")),
    Candidate("c6_hard_long", "c4 with a three times longer fine-tune (900 iterations, lr steps at 75/90 %)",
              _HARD, ("max_iter=900", "lr_steps=675,810", "checkpoint_period=300")),
    Candidate("c7_coco_sizes", "c4 at 256 px with COCO's size bands scaled to the image area (41/34/25 %): "
              "the only candidate that can reach (d)'s relative sizes",
              {**_HARD, "size_bands": "coco"}, ("model.min_size=256", "model.max_size=256")),
)}


def candidate_from_json(text: str) -> Candidate:
    """A candidate from JSON (``{"name": ..., "description": ..., "generator": {...}, "overrides": [...]}``)."""
    try:
        d = json.loads(text)
        c = Candidate(str(d["name"]), str(d.get("description", "")), dict(d.get("generator", {})),
                      tuple(d.get("overrides", ())))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"a candidate is JSON with a name, generator settings and overrides: {e}") from None
    c.check()
    return c


# --------------------------------------------------------------------------------------------
# running one candidate


def _annotation_sha256(data_root: Path) -> str:
    from dynrcnn.data.datasets import annotation_file

    h = hashlib.sha256()
    for split in ("train", "val"):
        h.update(annotation_file(data_root, split).read_bytes())
    return h.hexdigest()


def candidate_overrides(candidate: Candidate, preset: str = None, extra_overrides=()) -> tuple[str, ...]:
    """Every ``--set`` override a run on ``candidate`` trains with beside its threshold or method:
    :data:`BASE_OVERRIDES`, the candidate's, ``extra_overrides``, then a log line every
    ``max_iter // 100`` iterations (the first 1 % of training is a window of its own) with the
    proposal statistics (``log_stats``) and the evaluation at the end: targets (b) and (c)."""
    from dynrcnn.presets import build_config

    own = (*BASE_OVERRIDES, *candidate.overrides, *extra_overrides)
    max_iter = build_config(preset or PRESET, "baseline", overrides=list(own)).max_iter
    return (*own, f"log_period={max(1, max_iter // 100)}", "log_stats=true", "eval_at_end=true")


def run_specs(candidate: Candidate, data_root, runs_root, preset: str, seeds, extra_overrides=()) -> list:
    """``(name, config)`` of the candidate's baseline runs: each fixed threshold with each seed."""
    from dynrcnn.presets import build_config

    own = candidate_overrides(candidate, preset, extra_overrides)
    return [(Path(runs_root) / f"fixed{round(t * 100):d}_seed{seed}",
             build_config(preset, "baseline", seed=seed, data_root=str(data_root),
                          overrides=[f"model.fg_iou_thresh={t:g}", *own]))
            for t in THRESHOLDS for seed in seeds]


def _train_one(job: tuple) -> str:
    """Train (or resume, or reuse) one run and evaluate it: ``(run_dir, config, device, threads)``;
    the config's backbone is already resolved to a file (:func:`search_candidate`)."""
    import torch

    from dynrcnn.engine.trainer import train
    from dynrcnn.evaluation.coco_eval import ensure_evaluated
    from dynrcnn.rundir import runs

    out, cfg, device, threads = job
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if not runs.is_finished(out):
            resume = runs.has_checkpoints(out)
            train(cfg, out, resume=resume, device=device, progress=False,
                  overwrite=not resume and runs.is_run_dir(out))
        if not runs.is_evaluated(out):
            ensure_evaluated(out, device=device)
    finally:
        torch.set_num_threads(before)
    return str(out)


def search_candidate(candidate: Candidate, root, preset: str = PRESET, seeds=DEFAULT_SEEDS, jobs: int = 1,
                     device: str = "cpu", n_train: int | None = None, n_val: int | None = None,
                     extra_overrides=(), data_seed: int = SEARCH_DATA_SEED, log=print) -> dict:
    """Draw ``candidate``'s benchmark under ``root/<name>/data``, train its baseline runs under
    ``root/<name>/runs`` (``jobs`` at a time), measure (a)-(d); returns the record (one JSON line)."""
    from dynrcnn.data.datasets import annotation_file
    from dynrcnn.data.mini import N_TRAIN, N_VAL, ensure_mini
    from dynrcnn.engine.pretrain import resolve_backbone
    from dynrcnn.rundir.runs import load_run

    candidate.check()
    if len(set(seeds)) < 3:
        log(f"note: {len(set(seeds))} seed(s); issue 32 asks for at least 3 per threshold")
    t0 = time.perf_counter()
    base = Path(root) / candidate.name
    data_root = base / "data"
    specs = run_specs(candidate, data_root, base / "runs", preset, seeds, extra_overrides)
    image_size = specs[0][1].model.min_size  # the images are drawn at the size the runs train at
    n_train = N_TRAIN if n_train is None else n_train
    n_val = N_VAL if n_val is None else n_val
    settings = candidate.settings()
    if ensure_mini(data_root, seed=data_seed, n_train=n_train, n_val=n_val, image_size=image_size,
                   settings=settings):
        log(f"{candidate.name}: drew {n_train} + {n_val} images at {image_size} px in {data_root}")
    record = json.loads(annotation_file(data_root, "train").read_text())["info"]
    if (record.get("generator", {}) != settings.changed() or record.get("seed") != data_seed
            or record.get("image_size") != image_size):
        raise DynrcnnError(f"{data_root} holds a benchmark drawn with other settings or seed; delete it or "
                           "choose another --root")
    # the pinned pretrained backbone, built here once if missing (never by two workers at a time)
    specs = [(out, resolve_backbone(cfg, device=device, progress=False)) for out, cfg in specs]
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs)) if device == "cpu" else 0
    work = [(out, cfg, device, threads) for out, cfg in specs]
    log(f"{candidate.name}: {len(work)} baseline runs ({', '.join(f'{t:g}' for t in THRESHOLDS)} x seeds "
        f"{', '.join(map(str, seeds))}), {jobs} at a time")
    if jobs <= 1:
        for job in work:
            _train_one(job)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_train_one, work))
    runs = [load_run(out) for out, _ in specs]
    measured = measure(runs, annotation_file(data_root, "train"))
    return {
        "candidate": candidate.name,
        "description": candidate.description,
        "generator": settings.changed(),
        "overrides": [*BASE_OVERRIDES, *candidate.overrides, *extra_overrides],
        "preset": preset,
        "data": {"seed": data_seed, "train": n_train, "val": n_val, "image_size": image_size,
                 "annotation_sha256": _annotation_sha256(data_root)},
        "runs": [str(out) for out, _ in specs],
        "max_iter": specs[0][1].max_iter,
        "measured": measured,
        "met": {k: measured[k]["met"] for k in ("a", "b", "c", "d")},
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "date": datetime.date.today().isoformat(),
        "git": _git_head(),
    }


def _git_head() -> str | None:
    from dynrcnn.engine.trainer import _git_commit

    return _git_commit()


# --------------------------------------------------------------------------------------------
# the record and its table


def append_record(record: dict, path=RECORD) -> None:
    """Append one candidate's measurement to the JSON-lines record (the search is evidence: never
    rewritten, only appended)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_finite(record), sort_keys=True, allow_nan=False) + "\n")


def _finite(v):
    """``v`` with every non-finite float (an interval of one seed) as None: strict JSON."""
    import math

    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_records(path=RECORD) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _num(v, fmt="{:+.1f}") -> str:
    import math

    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _word(met) -> str:
    return {True: "yes", False: "no", None: "-"}[met]


def candidates_markdown(records: list[dict]) -> str:
    """The candidates table of ``docs/premise.md`` from the record (one row per measurement)."""
    if not records:
        return "_No candidate measured yet._"
    rows = ["| candidate | preset, iterations, seeds | AP at 0.5 / 0.6 / 0.7 | (a) AP 0.7 - 0.5 [95 % CI] | "
            "(b) positives/object first 1 % / 10 % vs last 10 % | (c) late share >= 0.5 / 0.6 / 0.7 (%) | "
            "(d) objects/image, small/medium/large (%) | met (a b c d) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in records:
        m = r["measured"]
        means = m["a"]["means"].get("AP", {})
        d = m["a"]["diff_070_050"].get("AP", {})
        b = m["b"]["runs"]

        def mean_of(key):
            vals = [x[key] for x in b if x.get(key) is not None]
            return sum(vals) / len(vals) if vals else None

        late = [x["late"] for x in m["c"]["runs"] if x.get("late")]
        shares = (" / ".join(_num(100 * sum(s[u] for s in late) / len(late), "{:.1f}") for u in ("0.5", "0.6", "0.7"))
                  if late else "-")
        rel = m["d"]["relative"]
        seeds = sorted({s for v in m["seeds"].values() for s in v})
        rows.append(
            f"| {r['candidate']} | {r['preset']}, {r['max_iter']}, {len(seeds)} | "
            + " / ".join(_num(means.get(t), "{:.1f}") for t in ("0.5", "0.6", "0.7"))
            + f" | {_num(d.get('estimate'))} [{_num(d.get('low'))}, {_num(d.get('high'))}] | "
            f"{_num(mean_of('ratio_0.01'), '{:.2f}')} / {_num(mean_of('ratio_0.1'), '{:.2f}')} | {shares} | "
            f"{m['d']['objects_per_image']:.1f}, {100 * rel['small']:.0f}/{100 * rel['medium']:.0f}/"
            f"{100 * rel['large']:.0f} | " + " ".join(_word(r["met"][k]) for k in "abcd") + " |")
    return "\n".join(rows)


def write_page(page=PAGE, record=RECORD) -> bool:
    """Rewrite the candidates block of ``page`` from ``record``; False when the page has no block."""
    from dynrcnn.report.text import replace_readme_block

    return replace_readme_block(page, TAG, candidates_markdown(read_records(record)))


def chosen(records: list[dict]) -> dict | None:
    """The record line the declared rule freezes (docs/premise.md, "What is left"): going through
    :data:`CANDIDATES` in their declared order (the fewest changes first), the first whose latest
    measurement shows the paradox, (a)'s AP interval below 0; ``None`` when none does. Records
    of candidates that are not declared (``--candidate-json``) are never chosen."""
    latest = {}
    for r in records:
        latest[r["candidate"]] = r
    return next((latest[n] for n in CANDIDATES if n in latest and latest[n]["met"].get("a") is True), None)


def best_fixed_threshold(record: dict, metric: str = "AP") -> float:
    """The fixed threshold of :data:`THRESHOLDS` with the highest mean ``metric`` over the seeds
    of a search record (the best fixed control of the test, chosen on the search's draw)."""
    means = record["measured"]["a"]["means"][metric]
    scored = [(means[f"{t:g}"], t) for t in THRESHOLDS if means.get(f"{t:g}") is not None]
    if not scored:
        raise DynrcnnError(f"the record of {record.get('candidate')} has no {metric} at a fixed threshold")
    return max(scored)[1]


def search(names_or_candidates, root, record=RECORD, page=PAGE, **kwargs) -> list[dict]:
    """:func:`search_candidate` for each candidate (a name of :data:`CANDIDATES` or a
    :class:`Candidate`), appending each measurement to ``record`` and rewriting ``page``'s table."""
    out = []
    for c in names_or_candidates:
        if isinstance(c, str):
            if c not in CANDIDATES:
                raise ConfigError(f"no candidate {c!r}; choose from {', '.join(CANDIDATES)} or pass --candidate-json")
            c = CANDIDATES[c]
        rec = search_candidate(c, root, **kwargs)
        append_record(rec, record)
        if page:
            write_page(page, record)
        out.append(rec)
    return out


__all__ = ["Candidate", "CANDIDATES", "SEARCH_DATA_SEED", "TARGETS", "search", "search_candidate", "run_specs",
           "append_record", "read_records", "candidates_markdown", "write_page", "candidate_from_json",
           "candidate_overrides", "chosen", "best_fixed_threshold", "PRESET"]
