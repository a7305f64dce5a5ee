"""``dynrcnn report``: run the notebooks of a profile with papermill and render the HTML report."""

from __future__ import annotations

import argparse
import textwrap

from dynrcnn.cli.help import HelpFormatter


def register(subparsers) -> None:
    from dynrcnn.report.profiles import PROFILES

    p = subparsers.add_parser(
        "report",
        help="run the report notebooks (papermill) and render build/report/index.html",
        description=(
            "Run the report pipeline: 01_data -> training runs (03_train, --jobs in parallel) -> "
            "04_evaluate per run -> 02_method -> 05_results, then render every executed notebook to "
            "HTML and write OUT/index.html. Complete runs are reused unless --overwrite.\n\nProfiles:\n"
            + "\n".join(textwrap.fill(f"{k:10s} {v.description}", 88, initial_indent="  ", subsequent_indent=" " * 13,
                                       break_on_hyphens=False) for k, v in PROFILES.items())
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="mini", help="what to run (default mini)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="folder for every default output below (build/report, runs/, figures/, generated data, "
                        "README.md's results block when DIR/README.md has its markers); default: this checkout "
                        "when run from inside it, else the current directory")
    p.add_argument("--out", default=None, help="where executed notebooks and HTML go (default ROOT/build/report)")
    p.add_argument("--runs-root", default=None, help="run directories (default ROOT/runs/<profile>)")
    p.add_argument("--data-root", default=None,
                   help="dataset folder (default: the profile's; required for coco)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu for smoke/mini, cuda if available for coco)")
    p.add_argument("--jobs", type=int, default=None,
                   help="training runs in parallel, one process each (default 2 on CPU, 1 on GPU)")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain every run from scratch, replacing complete ones (their files are deleted first)")
    p.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--extra-seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="also train every configuration of the profile with these seeds (runs named "
                        "<run>_seed<N>): more seeds narrow the 95%% intervals the verdicts follow from")
    p.add_argument("--published-weights", nargs="+", default=None, metavar="FILE",
                   help="downloaded MMDetection checkpoints (Faster R-CNN and Dynamic R-CNN R50-FPN 1x, see "
                        "docs/published_weights.md): each is converted (dynrcnn convert), evaluated on the "
                        "profile's data and shown next to the report's runs with the published AP")
    p.set_defaults(func=_run)
    register_mmdet(subparsers)
    register_controls(subparsers)
    register_study(subparsers)
    register_check(subparsers)


def _run(args) -> int:
    """``dynrcnn report``: the pipeline, then the headline, the status counts and where it went.
    A failing notebook exits 1 (its message names the notebook and the cell)."""
    import sys

    from dynrcnn.report.pipeline import ReportError
    from dynrcnn.report.studies.record import run_pipeline
    from dynrcnn.report.text import summary_lines

    try:
        result = run_pipeline(args.profile, out=args.out, runs_root=args.runs_root, data_root=args.data_root,
                              device=args.device, jobs=args.jobs, force=args.overwrite,
                              extra_seeds=args.extra_seeds or (), root=args.root,
                              published=args.published_weights or ())
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in summary_lines(result.runs_root, result.evidence):
        print(line)
    print(f"report: {result.index}  ({result.wall_time_sec / 60:.1f} min)")
    print(f"figures: {result.figures_dir}")
    return 0


def register_mmdet(subparsers) -> None:
    p = subparsers.add_parser(
        "mmdet",
        help="train MMDetection's Faster / Dynamic R-CNN next to the report of record and compare (make mmdet)",
        description="MMDetection side by side (docs/mmdetection.md): trains what is missing of "
                    "MMDetection's runs in its own environment (.venv-mmdet, make mmdet-env) from the report of "
                    "record's backbone and settings, converts and evaluates them, runs notebooks/06_mmdet.ipynb "
                    "and writes figures/mmdet/ and the RESULTS-MMDET block of docs/mmdetection.md. Needs the runs "
                    "of 'make report'.",
    )
    p.add_argument("--root", default=None, metavar="DIR", help="the report's root (default: this checkout)")
    p.add_argument("--jobs", type=int, default=2, help="MMDetection runs in parallel, one thread each (default 2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the preset for MMDetection's runs (as dynrcnn train --set)")
    p.add_argument("--no-readme", action="store_true", help="do not write the page's generated block")
    p.set_defaults(func=_run_mmdet)


def _run_mmdet(args) -> int:
    from dynrcnn.report.studies.mmdet import run_side_by_side

    res = run_side_by_side(root=args.root, overrides=args.overrides, jobs=args.jobs, readme=not args.no_readme)
    for name, bench in res["benchmarks"].items():
        for sentence in bench["sentences"]:
            print(f"{name}: {sentence}")
    return 0


def register_controls(subparsers) -> None:
    p = subparsers.add_parser(
        "controls",
        help="fixed thresholds, fixed betas and the sensitivity to K_I, K_beta, C (make report-controls)",
        description="The controls of the report of record (docs/controls.md): trains what is missing of the "
                    "fixed-threshold, fixed-beta, DLA/DSL-alone and sensitivity runs into runs/controls with the "
                    "report of record's preset, seeds and backbone, evaluates them on both benchmarks, runs "
                    "notebooks/07_controls.ipynb and writes figures/controls/ and the CONTROLS block of "
                    "docs/controls.md. Needs the runs of 'make report' (the final threshold and beta are read "
                    "from them).",
    )
    p.add_argument("--root", default=None, metavar="DIR", help="the report's root (default: this checkout)")
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel, one process each (default 2)")
    p.add_argument("--no-readme", action="store_true", help="do not write the page's generated block")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="the first N of the ten declared seeds only (default: all ten); the block says how many")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: write the results, notebook and block from the complete runs (e.g. while "
                        "another 'dynrcnn controls' is still training the rest)")
    p.set_defaults(func=_run_controls)


def _run_controls(args) -> int:
    from dynrcnn.report.studies.controls import run_controls

    from dynrcnn.errors import DynrcnnError

    if args.seeds is not None and args.seeds < 2:
        raise DynrcnnError(f"--seeds must be >= 2 (a seed-level interval needs two seeds), got {args.seeds}")
    res = run_controls(root=args.root, jobs=args.jobs, readme=not args.no_readme, seeds=args.seeds,
                       train=not args.no_train)
    print(res["interpretation"])
    return 0


def register_study(subparsers) -> None:
    p = subparsers.add_parser(
        "study",
        help="run a declared study (dynrcnn/report/studies/NAME.py): train what is missing, results.json, notebook",
        description="Run a study declared in dynrcnn/report/studies/NAME.py (its STUDY): train and evaluate what "
                    "is missing of its runs, write its results.json from the package, execute its notebook and "
                    "write its page's generated block. 'controls' and 'mmdet' are 'dynrcnn controls' and "
                    "'dynrcnn mmdet' with their defaults.",
    )
    p.add_argument("name", help="the study's module name under dynrcnn/report/studies/")
    p.add_argument("--root", default=None, metavar="DIR", help="the report's root (default: this checkout)")
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel, one process each (default 2)")
    p.add_argument("--no-readme", action="store_true", help="do not write the page's generated block")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_study)


def _run_study(args) -> int:
    from dynrcnn.report.study import RESULTS, get_study, run_study

    study = get_study(args.name)
    run_study(study, root=args.root, jobs=args.jobs, progress=not args.no_progress, write_block=not args.no_readme)
    print(f"{study.name}: {study.figures}/{RESULTS}")
    return 0


def register_check(subparsers) -> None:
    p = subparsers.add_parser(
        "check-report",
        help="compare a fresh report's results.json with the committed one (identical / equivalent / different)",
        description="After 'make report', compare the fresh figures/results.json with the committed one "
                    "(git HEAD's, or --against FILE): per configuration and metric, 'identical' when every seed "
                    "reproduced exactly (same CPU type), else the Welch interval of the difference of seed means "
                    "and 'equivalent within +-m' / 'different' / 'inconclusive' against the declared margins. "
                    "Exit 1 when a row is 'different'.",
    )
    p.add_argument("--fresh", default="figures/results.json", help="the fresh results.json (default: %(default)s)")
    p.add_argument("--against", default=None, metavar="FILE",
                   help="the committed results.json (default: the --fresh path as committed at git HEAD)")
    p.set_defaults(func=_run_check)


def _run_check(args) -> int:
    import json
    import subprocess
    from pathlib import Path

    from dynrcnn.errors import DynrcnnError
    from dynrcnn.report.consistency import compare_results, summary

    fresh_path = Path(args.fresh)
    if not fresh_path.is_file():
        raise DynrcnnError(f"{fresh_path} not found: run 'make report' first (or pass --fresh FILE)")
    if args.against:
        committed = json.loads(Path(args.against).read_text())
    else:
        rel = fresh_path.resolve()
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             cwd=rel.parent).stdout.strip()
        shown = subprocess.run(["git", "show", f"HEAD:{rel.relative_to(top).as_posix()}"], capture_output=True,
                               text=True, cwd=top) if top else None
        if shown is None or shown.returncode != 0:
            raise DynrcnnError(f"no committed version of {fresh_path} at git HEAD: pass --against FILE")
        committed = json.loads(shown.stdout)
    table = compare_results(json.loads(fresh_path.read_text()), committed)
    if len(table):
        print(table.to_string(index=False, float_format=lambda v: f"{v:+.2f}"))
    print(summary(table))
    return 1 if (table["verdict"] == "different").any() else 0
