"""``dynrcnn report``: run the notebooks of a profile with papermill and render the HTML report."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from dynrcnn.report.profiles import PROFILES

    p = subparsers.add_parser(
        "report",
        help="run the report notebooks (papermill) and render build/report/index.html",
        description=(
            "Run the report pipeline: 01_data -> training runs (03_train, --jobs in parallel) -> "
            "04_evaluate per run -> 02_method -> 05_results, then render every executed notebook to "
            "HTML and write OUT/index.html. Complete runs are reused unless --force.\n\nProfiles:\n"
            + "\n".join(f"  {k:6s} {v.description}" for k, v in PROFILES.items())
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument("--force", action="store_true",
                   help="retrain every run from scratch, replacing complete ones (their files are deleted first)")
    p.add_argument("--extra-seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="also train every configuration of the profile with these seeds (runs named "
                        "<run>_seed<N>): more seeds narrow the 95%% intervals the verdicts follow from")
    p.add_argument("--published-weights", nargs="+", default=None, metavar="FILE",
                   help="downloaded MMDetection checkpoints (Faster R-CNN and Dynamic R-CNN R50-FPN 1x, see "
                        "README 'Published weights'): each is converted (dynrcnn convert), evaluated on the "
                        "profile's data and shown next to the report's runs with the published AP")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from dynrcnn.report.pipeline import main_report

    return main_report(args)
