"""``dynrcnn premise``: the targets of the paper's premise, and the search for a benchmark that shows
them on baseline runs only (issue 32; docs/premise.md)."""

from __future__ import annotations

from dynrcnn.cli.help import HelpFormatter


def _targets(args) -> int:
    from dynrcnn.evaluation.premise import targets_markdown

    table = targets_markdown()
    if args.write:
        from dynrcnn.report.text import replace_readme_block

        if not replace_readme_block(args.write, "PREMISE-TARGETS", table):
            from dynrcnn.errors import DynrcnnError

            raise DynrcnnError(f"{args.write} has no <!-- PREMISE-TARGETS:BEGIN/END --> block")
        print(f"targets written to {args.write}")
    else:
        print(table)
    return 0


def _search(args) -> int:
    from dynrcnn.report.premise import CANDIDATES, candidate_from_json, search

    chosen = list(args.candidates) + [candidate_from_json(text) for text in args.candidate_json]
    if not chosen:
        chosen = list(CANDIDATES)
    records = search(chosen, args.root, record=args.record, page=args.page or None, preset=args.preset,
                     seeds=tuple(args.seeds), jobs=args.jobs, device=args.device, n_train=args.train,
                     n_val=args.val, extra_overrides=tuple(args.set))
    for r in records:
        d = r["measured"]["a"]["diff_070_050"].get("AP", {})
        print(f"{r['candidate']}: AP(0.7) - AP(0.5) = {d.get('estimate', float('nan')):+.2f} "
              f"[{d.get('low', float('nan')):+.2f}, {d.get('high', float('nan')):+.2f}]; met "
              + ", ".join(f"({k}) {v}" for k, v in r["met"].items()) + f"; {r['wall_seconds']:.0f} s")
    print(f"appended {len(records)} measurement(s) to {args.record}")
    return 0


def _freeze(args) -> int:
    from dynrcnn.errors import DynrcnnError
    from dynrcnn.report import premise_test as pt
    from dynrcnn.report.premise import CANDIDATES, best_fixed_threshold, chosen, read_records
    from dynrcnn.report.studies.premise import draw_test_data

    args.data_root = args.data_root or pt.DATA_ROOT
    pick = chosen(read_records(args.record))
    if pick is None:
        raise DynrcnnError(f"no declared candidate in {args.record} shows the paradox (a): nothing to freeze; "
                           "docs/premise.md says what was tried")
    name = pick["candidate"]
    print(f"the declared rule chooses {name}: AP(0.7) - AP(0.5) interval below 0 on the search's draw; "
          f"best fixed threshold there {best_fixed_threshold(pick):g}")
    sha = draw_test_data(CANDIDATES[name], args.data_root)
    frozen = pt.Frozen(name, pick["data"]["annotation_sha256"], sha)
    print(f"test draw (data seed {pt.TEST_DATA_SEED}) in {args.data_root}: annotations sha256 {sha}")
    if pt.FROZEN is not None and pt.FROZEN != frozen:
        raise DynrcnnError(f"dynrcnn/report/premise_test.py freezes {pt.FROZEN}, the record and the draw give {frozen}")
    print("frozen: dynrcnn/report/premise_test.py has it" if pt.FROZEN == frozen else
          "to freeze it, set in dynrcnn/report/premise_test.py and commit before any Dynamic R-CNN, DLA or DSL run:\n"
          f'FROZEN = Frozen("{frozen.candidate}", "{frozen.search_sha256}",\n                "{frozen.test_sha256}")')
    return 0


def register(subparsers) -> None:
    from dynrcnn.config import default_device
    from dynrcnn.report.premise import CANDIDATES, DEFAULT_SEEDS, PAGE, PRESET, RECORD

    p = subparsers.add_parser(
        "premise", help="the paper's premise: its targets, and the search for a benchmark that shows them",
        description="The paradox Dynamic R-CNN answers (a fixed R-CNN threshold of 0.7 scoring below 0.5 on COCO) "
                    "and what comes with it, as targets with their sources (docs/premise.md), and the search "
                    "for a miniature benchmark that shows them, on baseline runs at fixed thresholds only.",
        formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="premise_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])

    t = sub.add_parser("targets", help="print the targets table (or write it into a page's block)",
                       formatter_class=HelpFormatter)
    t.add_argument("--write", metavar="PAGE", default=None,
                   help="rewrite the <!-- PREMISE-TARGETS --> block of PAGE (e.g. docs/premise.md)")
    t.set_defaults(func=_targets)

    s = sub.add_parser(
        "search", help="measure candidate benchmarks on baseline runs at fixed 0.5 / 0.6 / 0.7",
        description="For each candidate: draw its benchmark, train the baseline at fixed R-CNN thresholds 0.5, "
                    "0.6 and 0.7 with each seed (never Dynamic R-CNN, DLA or DSL), measure targets (a)-(d) and "
                    "append the measurement to the record; the page's candidates table is rewritten from it. "
                    "Finished runs are reused and interrupted ones resume. Candidates: "
                    + "; ".join(f"{c.name}: {c.description}" for c in CANDIDATES.values()),
        formatter_class=HelpFormatter)
    s.add_argument("candidates", nargs="*", metavar="CANDIDATE",
                   help=f"candidate names: {', '.join(CANDIDATES)} (default: all of them)")
    s.add_argument("--candidate-json", action="append", default=[], metavar="JSON",
                   help='an ad-hoc candidate: {"name": ..., "generator": {...}, "overrides": [...]} (repeatable)')
    s.add_argument("--root", default="runs/premise", help="folder for the candidates' data and runs (default: %(default)s)")
    s.add_argument("--record", default=RECORD, help="JSON-lines record the measurements are appended to "
                   "(default: %(default)s)")
    s.add_argument("--page", default=PAGE, help="page whose candidates table is rewritten ('' for none; "
                   "default: %(default)s)")
    s.add_argument("--preset", default=PRESET, help="training preset of the runs (default: %(default)s)")
    s.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                   help="training seeds per threshold (default: %(default)s; at least 3)")
    s.add_argument("--train", type=int, default=None, help="training images drawn (default: the benchmark's 2000)")
    s.add_argument("--val", type=int, default=None, help="validation images drawn (default: the benchmark's 500)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (e.g. max_iter=4 for a plumbing check)")
    s.add_argument("--jobs", type=int, default=1, help="runs trained at a time (default: %(default)s)")
    s.add_argument("--device", default=default_device(), help="cpu, cuda or cuda:N")
    s.set_defaults(func=_search)

    f = sub.add_parser(
        "freeze", help="apply the declared rule to the search's record and draw the frozen benchmark's test data",
        description="Choose the candidate the declared rule gives (the first declared candidate whose paradox "
                    "interval lies below 0), draw its benchmark on the test's fresh data seed and print the "
                    "FROZEN declaration to commit before any Dynamic R-CNN, DLA or DSL run on it (or check the "
                    "committed one). Then: make report-premise.",
        formatter_class=HelpFormatter)
    f.add_argument("--record", default=RECORD, help="the search's record (default: %(default)s)")
    f.add_argument("--data-root", default=None, help="where the test draw goes (default: data/premise)")
    f.set_defaults(func=_freeze)
