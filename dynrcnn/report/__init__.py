"""The executable report: profiles, analysis, claims, text, the papermill pipeline, the index.

``dynrcnn report --profile smoke|mini|coco`` runs the notebooks in ``notebooks/`` with
papermill (:mod:`.pipeline`) and writes ``index.html`` (:mod:`.index`). All numbers are read
from run directories (:mod:`dynrcnn.runs`); the published numbers come from
:mod:`dynrcnn.reference` with their source. Miniature-benchmark results are labelled as such
and never compared with COCO numbers as if they were COCO numbers: at miniature scale a
relative claim can only be checked for its *direction*.

Submodules, in the order data flows: :mod:`.profiles` (which runs) -> :mod:`.analysis`
(numbers from runs) -> :mod:`.claims` (claims as data: status + sentence) -> :mod:`.tables`
and :mod:`.text` (what the notebooks and README show) -> :mod:`.index` -> :mod:`.pipeline`.
This package re-exports the surface the notebooks use.
"""

from dynrcnn.report.analysis import (ablation_table, dynamic_facts_table, profile_scale, proposal_quality,
                                     recompute_updates, same_nms_pair, smooth_l1_gradient, tight_share)
from dynrcnn.report.curves import ap_curves, authors_trajectory, gain_curves, trajectories
from dynrcnn.report.evidence import Evidence, evidence_of
from dynrcnn.report.claims import (STATUSES, Claim, claims, claims_table, count_statuses, find_claim, interval_verdict,
                                   verdict_absolute, verdict_delta, verdict_overhead)
from dynrcnn.report.results import write_results
from dynrcnn.report.pipeline import ReportError, execute_notebook, main_report, plan, run_pipeline
from dynrcnn.report.profiles import (NMS_085, NOTEBOOK_DIR, NOTEBOOKS, PROFILES, REPO, Profile, RunSpec,
                                     default_run_dir, get_profile, param_path, repo_path)
from dynrcnn.report.tables import (ap_per_iou_table, compute_table, config_table, dataset_table,
                                   environment_table, eval_table, notebook_durations, published_weights_rows, styled)
from dynrcnn.report.text import (README_BEGIN, README_END, ap_sentence, readme_table, trend_sentence, update_readme,
                                 why_sentence)

__all__ = [
    "Evidence", "evidence_of", "Profile", "RunSpec", "PROFILES", "NMS_085", "NOTEBOOK_DIR", "NOTEBOOKS", "REPO", "get_profile", "repo_path", "param_path", "default_run_dir",
    "recompute_updates", "proposal_quality", "smooth_l1_gradient", "ablation_table", "same_nms_pair", "tight_share", "profile_scale",
    "dynamic_facts_table", "ap_curves", "gain_curves", "trajectories", "authors_trajectory", "write_results",
    "count_statuses", "find_claim", "why_sentence",
    "Claim", "STATUSES", "claims", "claims_table", "interval_verdict", "verdict_delta", "verdict_absolute",
    "verdict_overhead",
    "config_table", "dataset_table", "eval_table", "ap_per_iou_table", "compute_table", "environment_table",
    "notebook_durations", "published_weights_rows", "styled",
    "readme_table", "update_readme", "README_BEGIN", "README_END", "trend_sentence", "ap_sentence",
    "run_pipeline", "plan", "execute_notebook", "main_report", "ReportError",
]
