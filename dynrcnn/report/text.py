"""Words of the report: README's generated results block (markdown tables) and the
interpretation sentences the notebooks and the index page print."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from dynrcnn.config import iou_index
from dynrcnn.report.analysis import CROSSING, METRICS, ablation_table, ap_gain_per_iou, dynamic_facts, profile_scale
from dynrcnn.report.claims import PRIMARY, claims, claims_table, count_statuses, find_claim
from dynrcnn.report.evidence import Evidence
from dynrcnn.report.profiles import FIGURE_FILES, PROFILES
from dynrcnn.report.results import environment_line, environment_of
from dynrcnn.rundir.run_summary import run_device, run_iterations, run_name, scale_label
from dynrcnn.rundir.runs import find_runs
from dynrcnn.io import relative_path
from dynrcnn.evaluation.stats import signed

def readme_markers(tag: str) -> tuple[str, str]:
    """The comment lines around README's generated block ``tag`` (one per report profile)."""
    return f"<!-- {tag}:BEGIN -->", f"<!-- {tag}:END -->"


_MAIN = PROFILES["mini"]  # the ``make report`` profile: its block is README's main one
README_BEGIN, README_END = readme_markers(_MAIN.readme)


# --------------------------------------------------------------------------------------------
# markdown


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.2f}"
    return str(v).replace("|", "\\|")


def markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a markdown table (floats to 2 decimals, NaN and None as '-')."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(v) for v in row.tolist()) + " |")
    return "\n".join(lines)


def _evidence(runs_root, evidence) -> Evidence:
    return evidence if evidence is not None else Evidence(find_runs(runs_root))


def readme_table(runs_root, label: str | None = None, evidence: Evidence | None = None) -> str:
    """The README's numbers, as markdown, generated from the runs under ``runs_root``
    (shown as ``label``, default the path): the ablation table and the claims table with
    verdicts (scale in every row). ``evidence``: those runs' evidence, when already built."""
    runs = _evidence(runs_root, evidence)
    if not runs:
        return f"(no runs under {runs_root})"
    ab = ablation_table(runs)
    cl = claims_table(runs)
    first = runs[0]
    head = (f"Runs under `{label or runs_root}`: preset {first.config.preset}, "
            f"{run_iterations(first)} iterations, device {run_device(first)}, "
            f"scale: **{scale_label(first.config.preset)}**.\n\n")
    ab_md = markdown(ab[["configuration", "RPN NMS", "seeds", *METRICS, "ΔAP vs baseline", "ΔAP 95% CI",
                         "ΔAP90 vs baseline", "ΔAP90 95% CI", "Δ vs"]])
    scale = profile_scale(runs)
    untestable = cl[cl["verdict"].str.startswith("not testable")]
    cl = cl.drop(untestable.index)  # absolute COCO numbers at miniature scale: named in one line, not 8 rows
    cl_md = markdown(cl[["claim", "family", "source", "published", "ours", "verdict"]].rename(
        columns={"published": "published (COCO)", "ours": f"this report ({scale})"}))
    rest = (f"\n\nNot testable at this scale (absolute COCO numbers): {', '.join(untestable['source'].unique())}; "
            f"{len(untestable)} rows in the summary page.") if len(untestable) else ""
    return head + "Ablation (AP in %, COCO-style metrics on the evaluated split):\n\n" + ab_md + \
        "\n\nClaims (family: primary claims are Holm-corrected together; see docs/statistics.md):\n\n" + cl_md + \
        rest + "\n"


def replace_readme_block(readme, tag: str, body: str) -> bool:
    """Replace README's block between the ``tag`` markers (:func:`readme_markers`) with
    ``body``. Returns False (and changes nothing) when the file has no such markers."""
    readme = Path(readme)
    text = readme.read_text() if readme.is_file() else ""
    begin, end = readme_markers(tag)
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(head + f"{begin}\n{body.rstrip()}\n{end}" + tail)
    return True


def write_page_block(page, tag: str, body: str) -> int:
    """The scripts' ``--page`` / ``--readme``: ``body`` into ``page``'s ``tag`` block, said on
    stdout; 0, or 2 (one line on stderr, the page untouched) when the page has no such block."""
    if not replace_readme_block(page, tag, body):
        print(f"{page} has no <!-- {tag}:BEGIN/END --> block markers; nothing written", file=sys.stderr)
        return 2
    print(f"written to {page}")
    return 0


def readme_blocks(readme, runs_root, figures_dir, command: str = "make report", tag: str = _MAIN.readme,
                  title: str = _MAIN.readme_title, index="build/report/index.html",
                  evidence: Evidence | None = None) -> dict[str, str]:
    """README's generated blocks of a report (tag -> markdown): ``tag`` holds the key figures and
    :func:`readme_table` of ``runs_root`` under the heading ``title``; ``<tag>-HEADLINE`` the
    headline of the claims (when they are measured), so README's numbers always come from the runs."""
    base = Path(readme).parent
    fig = relative_path(figures_dir, base)
    evidence = _evidence(runs_root, evidence)
    blocks = {tag: (
        f"## {title} (written by `{command}`; do not edit by hand)\n\n"
        f"{environment_line(environment_of(evidence))}\n\n"
        f"![IoU threshold and SmoothL1 beta against iteration]({fig}/{FIGURE_FILES['trend']})\n\n"
        f"![AP at every IoU threshold per method]({fig}/{FIGURE_FILES['ap_vs_iou']})\n\n"
        f"{readme_table(runs_root, relative_path(runs_root, base), evidence)}\n"
        f"The full report (every notebook, figure and table) is `{relative_path(index, base)}`.\n"
    )}
    line = headline(claims(evidence))
    if line:  # README's first screen carries the headline too, when it has the markers
        blocks[f"{tag}-HEADLINE"] = f"**Result of record** (written by `{command}`): {line}"
    return blocks


def update_readme(readme, runs_root, figures_dir, command: str = "make report", tag: str = _MAIN.readme,
                  title: str = _MAIN.readme_title, index="build/report/index.html",
                  evidence: Evidence | None = None) -> bool:
    """Write :func:`readme_blocks` into ``readme``. Returns False (and changes nothing of the main
    block) when the file has no markers for ``tag``."""
    blocks = readme_blocks(readme, runs_root, figures_dir, command, tag, title, index, evidence)
    main = blocks.pop(tag)
    for t, body in blocks.items():
        replace_readme_block(readme, t, body)
    return replace_readme_block(readme, tag, main)


# --------------------------------------------------------------------------------------------
# interpretation sentences (used by the notebooks and the index page)


def headline(items) -> str | None:
    """One line: the primary family (Dynamic R-CNN minus the same-NMS baseline, AP and AP90 on each
    benchmark: :data:`~dynrcnn.report.claims.PRIMARY`) with the seed-level 95 % intervals, Holm's
    correction and the verdicts (from the claims; None when they are not measured)."""
    found = [(find_claim(items, key), metric) for key, metric in PRIMARY]
    found = [(c, m) for c, m in found if c is not None and c.intervals]
    if not found:
        return None
    benchmarks = list(found[0][0].intervals)
    parts = []
    for b in benchmarks:
        ivs = [(m, c.intervals.get(b)) for c, m in found if c.intervals.get(b)]
        text = ", ".join(f"{signed(iv['estimate'])} {m} [{signed(iv['low'])}, {signed(iv['high'])}]" for m, iv in ivs)
        parts.append(f"{text} ({'evaluation split' if b == 'own' else b})")
    seeds = found[0][0].intervals[benchmarks[0]]["seeds"]
    n_tests = sum(len(c.intervals) for c, _ in found)
    verdicts = "; ".join(f"{m}: {c.status}" for c, m in found)
    return (f"Dynamic R-CNN vs Faster R-CNN at the same RPN NMS ({seeds}; seed-level 95% intervals): "
            + "; ".join(parts) + f". Primary family of {n_tests} tests, Holm-corrected. Verdicts: {verdicts}.")


def summary_lines(runs_root, evidence: Evidence | None = None) -> list[str]:
    """What the terminal prints when a report ends: the headline and the claims' status counts."""
    items = claims(_evidence(runs_root, evidence))
    counts = count_statuses(items)
    lines = [h] if (h := headline(items)) else []
    lines.append("claims: " + ", ".join(f"{n} {st}" for st, n in counts.items() if n))
    return lines


def _with_dynamic_log(runs, method: str) -> list:
    return [r for r in runs if r.config.method == method and r.dynamic is not None and len(r.dynamic)]


def _trend_comparison(rose: bool, fell: bool) -> str:
    if rose and fell:
        return "the same directions as the paper's trend figure on COCO (threshold up, beta down)"
    return ("unlike the paper's trend figure (threshold up, beta down), here the "
            + " and ".join(x for x in ("threshold did not rise" if not rose else "",
                                       "beta did not fall" if not fell else "") if x)
            + " (too few iterations, or proposals not yet better than T_init)")


def trend_sentence(runs) -> str:
    dyn = _with_dynamic_log(runs, "dynamic")
    if not dyn:
        return "No dynamic run: no trend to describe."
    r = dyn[0]
    d = r.dynamic
    t0, t1 = float(d["iou_threshold"].iloc[0]), float(d["iou_threshold"].iloc[-1])
    b0, b1 = float(d["beta"].iloc[0]), float(d["beta"].iloc[-1])
    base = _with_dynamic_log(runs, "baseline")
    fixed = (f" (the baseline keeps {float(base[0].dynamic['iou_threshold'].iloc[0]):.2f} and "
             f"{float(base[0].dynamic['beta'].iloc[0]):.3g})") if base else ""
    cmp = _trend_comparison(t1 > t0 + 1e-6, b1 < b0 - 1e-9)
    tmax = float(d["iou_threshold"].max())
    below = ""
    if base:
        base_thr = float(base[0].dynamic["iou_threshold"].iloc[0])
        if tmax < base_thr:
            below = (f" The threshold never reached the baseline's fixed {base_thr:.2f} (maximum {tmax:.3f}), so "
                     f"throughout this run DLA labelled more, lower-IoU proposals as foreground than the baseline did.")
    return (f"In run {run_name(r)} the IoU threshold went {t0:.3f} -> {t1:.3f} and beta {b0:.3f} -> {b1:.3f} "
            f"over {len(d) - 1} updates{fixed}: {cmp}.{below}")


def _fmt_mean(vals, fmt: str = ".3f", unit: str = "") -> str:
    """Mean of the seeds' values with their range, e.g. ``0.579 (0.576-0.581 over 3 seeds)``."""
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    mid = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mid:{fmt}}{unit}"
    if f"{lo:{fmt}}" == f"{hi:{fmt}}":
        return f"{mid:{fmt}}{unit} in all {len(vals)} seeds"
    return f"{mid:{fmt}}{unit} ({lo:{fmt}}-{hi:{fmt}}{unit} over {len(vals)} seeds)"


def why_sentence(runs) -> str:
    """What the dynamic runs did, from their logs, and how it bears on the AP90 verdict: when
    the threshold crossed the baseline's 0.5, where threshold and beta ended, and the share of
    proposals at or above the threshold at the end."""
    dyn = [r for r in runs if r.config.method == "dynamic" and r.dynamic is not None and len(r.dynamic)]
    if not dyn:
        return "No dynamic run: nothing to explain."
    facts = [dynamic_facts(r) for r in dyn]
    crossed = [f["crossed_0.5_fraction"] for f in facts]
    never = sum(c is None for c in crossed)
    cross_text = (f"crossed 0.5 at {_fmt_mean([100 * c for c in crossed if c is not None], '.0f', ' % of training')}"
                  + (f" ({never} of {len(facts)} seeds never did)" if never else "")) if never < len(facts) else         "never crossed the baseline's fixed 0.5"
    text = (f"In the {len(dyn)} Dynamic R-CNN run(s) the threshold {cross_text}, ended at "
            f"{_fmt_mean([f['iou_threshold_end'] for f in facts])}, and beta ended at "
            f"{_fmt_mean([f['beta_end'] for f in facts])}; at the end "
            f"{_fmt_mean([100 * f['fg_fraction_end'] for f in facts if f['fg_fraction_end'] is not None], '.1f', ' %')}"
            f" of the RPN proposals reached the threshold in use.")
    ap90 = find_claim(claims(runs), "paper_delta_ap90")
    if ap90 is not None and ap90.status != "not-testable":
        stricter = all((f["iou_threshold_end"] or 0) > CROSSING for f in facts)
        text += (f" By the end of training DLA labelled {'fewer, better' if stricter else 'more, looser'} "
                 f"proposals as foreground than the baseline's fixed 0.5 does; the AP90 claim is {ap90.status} "
                 f"({ap90.sentence}).")
    return text


def ap_sentence(runs) -> str:
    gain = ap_gain_per_iou(runs)
    if gain is None:
        return "Baseline or dynamic evaluation missing: no comparison."
    ious, diff, scale = gain
    i = int(diff.argmax())
    at = {iou: diff[iou_index(iou)] for iou in (0.5, 0.75, 0.9)}
    return (f"Dynamic minus baseline AP: {at[0.5]:+.1f} at IoU 0.50, {at[0.75]:+.1f} at 0.75, {at[0.9]:+.1f} at "
            f"0.90; the largest gain ({diff[i]:+.1f}) is at IoU {ious[i]:.2f} [{scale}].")


__all__ = ["README_BEGIN", "README_END", "readme_markers", "replace_readme_block", "write_page_block", "markdown", "readme_table", "readme_blocks", "update_readme", "trend_sentence",
           "ap_sentence", "why_sentence", "headline", "summary_lines"]
