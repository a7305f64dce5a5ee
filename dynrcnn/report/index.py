"""``index.html``: the report's one-screen summary (scope, methodology, claims with
verdicts, ablation, key figures, what was easy and difficult, compute cost) linking every
executed notebook. Published numbers come from :mod:`dynrcnn.reference`."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from dynrcnn import reference as ref
from dynrcnn.report.analysis import ablation_table, profile_scale
from dynrcnn.report.results import environment_line, environment_of
from dynrcnn.report.claims import (CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, REPRODUCED, claims, count_statuses,
                                   find_claim)
from dynrcnn.report.evidence import Evidence
from dynrcnn.report.tables import compute_table
from dynrcnn.report.profiles import FIGURE_FILES, REPO
from dynrcnn.report.text import ap_sentence, headline, trend_sentence
from dynrcnn.rundir.run_summary import rpn_nms, run_device, run_iterations, scale_label
from dynrcnn.rundir.runs import find_runs
from dynrcnn.io import relative_path

STEP_TEXT = {
    "data": "the dataset: generation/check, statistics, sample images",
    "train": "one training run",
    "evaluate": "COCO metrics of a run, AP per IoU threshold, detections vs ground truth",
    "method": "DLA and DSL shown on a real run: SmoothL1, proposal IoU, statistics to threshold/beta",
    "results": "all runs: trend, losses, AP vs IoU, claims, ablation, compute cost, environment",
}

_STYLE = """body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 1.5em auto; padding: 0 1em; line-height: 1.4; }
table.t { border-collapse: collapse; font-size: 0.82em; margin: 0.5em 0 1em; display: block; max-width: 100%; overflow-x: auto; }
table.t th, table.t td { border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
p.headline { border-left: 4px solid #2a7; background: #f3faf6; padding: 0.5em 0.8em; }
.badge { display: inline-block; padding: 0 0.5em; border-radius: 0.7em; color: white; font-size: 0.85em; background: #888; }
.badge.reproduced { background: #2a7; } .badge.contradicted { background: #c33; } .badge.inconclusive { background: #c90; }
table.claims td { max-width: 28em; } details summary { cursor: pointer; color: #555; font-size: 0.85em; }
figure { margin: 0.5em 0; } img { max-width: 100%; height: auto; } figcaption { font-size: 0.8em; color: #555; }
.scale { background: #fff3cd; padding: 0.4em 0.8em; border-left: 4px solid #e0a800; }"""


def _img_tag(path: Path, alt: str, optional: bool = False) -> str:
    """The figure embedded; a missing one is said, unless ``optional`` (drawn only when the
    profile has the runs it needs)."""
    if not path.is_file():
        return "" if optional else f"<p><em>figure {html.escape(path.name)} missing</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    caption = f"{alt} ({path.parent.name}/{path.name})"
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.2f}", border=0, classes="t")


def _items(texts) -> str:
    return "".join(f"<li>{html.escape(t)}</li>" for t in texts)


def _ratio_text(items) -> str:
    c = find_claim(items, "paper_overhead")
    if c is None or not math.isfinite(float(c.ours)):
        return "not measured"
    return f"x{float(c.ours):.3f}"


def _easy(items) -> list[str]:
    return [
        "The method is a small change of one module: a subclass of torchvision's RoIHeads "
        "(label assignment and the box loss), everything else is the stock Faster R-CNN.",
        "Both statistics are order statistics of quantities the head computes anyway, so they stay on the "
        "device; the measured time-per-iteration ratio dynamic/baseline is " + _ratio_text(items) + ".",
    ]


def seeds_text(runs) -> str:
    """How many seeds each configuration (method, RPN NMS) has, from the runs themselves."""
    per: dict = {}
    for r in runs:
        per.setdefault((r.method, rpn_nms(r)), set()).add(r.seed)
    counts = sorted({len(v) for v in per.values()}) or [0]
    if len(counts) == 1:
        return f"{counts[0]} seed{'s' if counts[0] != 1 else ''} per configuration"
    return f"{counts[0]}-{counts[-1]} seeds per configuration"


def _difficult(runs, n_ablation_rows: int, scale: str) -> list[str]:
    first = runs[0] if runs else None
    hw = run_device(first) if first else "?"
    total_train = sum(((r.done or {}).get("wall_time_sec") or 0) for r in runs) / 60
    delta = ref.get("paper_delta_ap").value
    return [
        f"The published {delta:+g} AP compares Dynamic R-CNN at RPN NMS {ref.DYNAMIC_RPN_NMS:g} with baselines at "
        f"{ref.BASELINE_RPN_NMS:g}: the two effects have to be separated by an extra baseline"
        + (" (done here: see the ablation table)." if n_ablation_rows > 4 else "."),
        "The two reference implementations compute the statistics differently (mmdet vs official "
        "conventions); runs record which one they used.",
        (f"Miniature scale: {len(runs)} runs of {run_iterations(first) if first else '?'} iterations on {hw} "
         f"({total_train:.1f} min of training in total); {seeds_text(runs)}, so a difference whose 95% "
         "interval holds 0 is reported as inconclusive, and no number here is a COCO number.")
        if scale != "COCO" else
        f"COCO scale: {len(runs)} runs, {total_train / 60:.1f} h of training in total on {hw}.",
    ]


def _scope() -> str:
    d_ap, d_ap90 = ref.get("paper_delta_ap").value, ref.get("paper_delta_ap90").value
    absolute = ref.get("official_r50_1x").value
    return (f"<p>Claims checked (paper abstract): Dynamic R-CNN improves a ResNet-50-FPN Faster R-CNN by "
            f"<b>{d_ap:+g} AP</b> and\n<b>{d_ap90:+g} AP90</b> with <b>no extra overhead</b>; and the absolute "
            f"numbers of the official repository, the MMDetection\nmodel zoo and the seed reproduction "
            f"({absolute:g} AP for R50-FPN 1x).</p>")


def _methodology(result, profile, hw: str) -> str:
    gen = profile.generate
    data_note = (f"the generated miniature benchmark ({gen[0]} train / {gen[1]} val images of {profile.image_size} px)"
                 if gen else "COCO 2017 (train2017 / val2017)")
    return (f"<p>Preset <code>{html.escape(profile.preset)}</code> on {html.escape(data_note)}; runs\n"
            f"{html.escape(', '.join(f'{s.name} ({s.method})' for s in profile.runs))}; device {html.escape(hw)}.\n"
            "Each run is one execution of the training notebook (papermill), evaluated with COCO's metrics\n"
            f"(faster-coco-eval, pycocotools' numbers; AP at IoU 0.50:0.05:0.95, AP90 selected by index). Pipeline wall time {result.wall_time_sec / 60:.1f} min.\n"
            f"{html.escape(profile.description)}.</p>")


def _interval_cells(c) -> str:
    """One line per benchmark: the interval of the claim's difference (miniature scale)."""
    parts = []
    for bench, iv in c.intervals.items():
        name = "eval split" if bench == "own" else bench
        parts.append(f"{html.escape(name)}: {iv['estimate']:+.2f} [{iv['low']:+.2f}, {iv['high']:+.2f}]")
    return "<br>".join(parts) or "-"


def merged_claims(items) -> list[dict]:
    """The testable claims, one row per test, each with every published number of that test
    (the paper abstract's and the model zoo's AP gain are two references of one row:
    :data:`dynrcnn.reference.SAME_TEST`)."""
    return [{"claim": c, "sources": list(c.references) or [(c.source, c.published)]}
            for c in items if c.status != NOT_TESTABLE]


def _badge(status: str) -> str:
    return f'<span class="badge {html.escape(status)}">{html.escape(status)}</span>'


def _results(runs, items) -> str:
    """The claims as a compact table (status badge, intervals per benchmark, the full sentence on
    demand), the absolute COCO numbers this scale cannot test folded into one short table."""
    n = count_statuses(items)
    rows = []
    for r in merged_claims(items):
        c = r["claim"]
        published = "; ".join(f"{html.escape(src)} {v:+.2f}" if math.isfinite(float(v)) else html.escape(src)
                              for src, v in r["sources"])
        ours = f"{float(c.ours):+.2f}" if math.isfinite(float(c.ours)) else "-"
        rows.append(f"<tr><td>{html.escape(c.claim)}</td><td>{published}</td><td>{ours}</td>"
                    f"<td>{_interval_cells(c)}</td><td>{_badge(c.status)}<details><summary>why</summary>"
                    f"{html.escape(c.sentence)}</details></td></tr>")
    table = ('<table class="t claims"><tr><th>claim</th><th>published (COCO)</th><th>ours</th>'
             "<th>95 % interval per benchmark</th><th>status</th></tr>" + "".join(rows) + "</table>")
    absolute = [c for c in items if c.status == NOT_TESTABLE]
    folded = ""
    if absolute:
        df = pd.DataFrame([{"claim": c.claim, "source": c.source, "published": c.published, "ours": c.ours}
                           for c in absolute])
        folded = (f"<details><summary>{len(absolute)} absolute COCO numbers this scale cannot test "
                  f"(ours are miniature-benchmark numbers)</summary>{_table_html(df)}</details>")
    return (f"<p>{n[REPRODUCED]} claim(s) reproduced (in direction at miniature scale), {n[CONTRADICTED]} not "
            f"reproduced, {n[INCONCLUSIVE]} inconclusive,\nthe rest not testable at this scale. "
            f"{html.escape(ap_sentence(runs))} {html.escape(trend_sentence(runs))}</p>\n{table}\n{folded}")


# sections run by their own commands after the report of record, each in a sibling of its OUT
COMPANIONS = (("report-mmdet/06_mmdet.html", "6. MMDetection side by side", "make mmdet"),
              ("report-controls/07_controls.html", "7. The controls: fixed thresholds, fixed betas, sensitivity",
               "make report-controls"))


def _companions(out: Path) -> str:
    items = []
    for rel, title, command in COMPANIONS:
        if (Path(out).parent / rel).is_file():
            page = f'<a href="../{html.escape(rel)}">{html.escape(title)}</a>'
        else:  # no link to a page that does not exist yet
            page = f'{html.escape(title)} (not run yet)'
        items.append(f'<li>{page} — written by <code>{html.escape(command)}</code></li>')
    return "".join(items)


def write_index(result, profile, steps) -> Path:
    """The one-screen summary linking every notebook page (``result``: the pipeline's
    :class:`~dynrcnn.report.pipeline.PipelineResult`, ``steps``: its steps). Everything on the
    page is read from the result's :class:`~dynrcnn.report.evidence.Evidence` (built once)."""
    runs = result.evidence if result.evidence is not None else Evidence(find_runs(result.runs_root))
    scale = profile_scale(runs)
    items = claims(runs)
    ablation = ablation_table(runs)
    first = runs[0] if runs else None
    hw = run_device(first) if first else "?"
    links = "".join(
        f'<li><a href="{html.escape(s.output)}.html">{html.escape(s.output)}</a> — {html.escape(STEP_TEXT[s.kind])}'
        f' ({result.durations.get(s.output, float("nan")) / 60:.1f} min)</li>' for s in steps)
    figs = result.figures_dir
    scale_note = ("Numbers on this page come from the miniature benchmark; they test the <i>direction</i> of "
                  "the paper's claims, never its COCO numbers.") if scale != "COCO" else ""
    scale_text = scale_label(first.config.preset if first else profile.preset)
    name = html.escape(profile.name)
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Dynamic R-CNN reproducibility report ({name})</title>
<style>
{_STYLE}
</style></head><body>
<h1>Dynamic R-CNN (ECCV 2020): reproducibility report — profile <code>{name}</code></h1>
{f'<p class="headline"><b>{html.escape(line)}</b></p>' if (line := headline(items)) else ""}
<p class="scale"><b>Scale: {html.escape(scale_text)}.</b>
{scale_note}</p>
<p class="scale">{html.escape(environment_line(environment_of(runs)))}</p>
<h2>Results</h2>
{_results(runs, items)}
{_img_tag(figs / FIGURE_FILES['ap_vs_iou'], 'AP against IoU threshold')}
{_img_tag(figs / FIGURE_FILES['detections_compare'], 'The baseline and Dynamic R-CNN on the same validation images; solid boxes reach IoU 0.9 with their ground truth', optional=True)}
{_img_tag(figs / FIGURE_FILES['trend'], 'IoU threshold and beta against iteration')}
<h3>Ablation</h3>
{_table_html(ablation)}
<h2>Scope</h2>
{_scope()}
<h2>Methodology</h2>
{_methodology(result, profile, hw)}
<h2>What was easy</h2><ul>{_items(_easy(items))}</ul>
<h2>What was difficult</h2><ul>{_items(_difficult(runs, len(ablation), scale))}</ul>
<h2>Compute cost</h2>
{_table_html(compute_table(runs, result.durations))}
<h2>Notebooks (executed)</h2><ol>{links}</ol>
<p>Sections with their own commands (they read this report's runs):</p><ul>{_companions(result.out)}</ul>
<p>Figures: <code>{html.escape(relative_path(figs, REPO))}</code>. Runs: <code>{html.escape(relative_path(result.runs_root, REPO))}</code>
(relative to the checkout).</p>
</body></html>
"""
    result.index.write_text(body, encoding="utf-8")
    return result.index


__all__ = ["write_index", "STEP_TEXT"]
