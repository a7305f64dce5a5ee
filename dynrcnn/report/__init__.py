"""The executable report: profiles, analysis, claims, text, the papermill pipeline, the index.

``dynrcnn report --profile smoke|mini|coco`` runs the notebooks in ``notebooks/`` with
papermill (:mod:`.pipeline`) and writes ``index.html`` (:mod:`.index`). All numbers are read
from run directories (:mod:`dynrcnn.rundir.runs`); the published numbers come from
:mod:`dynrcnn.reference` with their source. Miniature-benchmark results are labelled as such
and never compared with COCO numbers as if they were COCO numbers: at miniature scale a
relative claim can only be checked for its *direction*.

Submodules, in the order data flows: :mod:`.profiles` (which runs) -> :mod:`.evidence` (the runs and their comparisons, built once) -> :mod:`.analysis`
(numbers from runs) -> :mod:`.claims` (claims as data: status + sentence) -> :mod:`.tables`
and :mod:`.text` (what the notebooks and README show) -> :mod:`.index` -> :mod:`.pipeline`.
This package re-exports each of those modules' ``__all__``: the surface the notebooks use.
"""

# each submodule's public names (its ``__all__``): a function added there is a notebook's to call,
# with no second list to keep here
from dynrcnn.report.evidence import *  # noqa: F401,F403
from dynrcnn.report.analysis import *  # noqa: F401,F403
from dynrcnn.report.curves import *  # noqa: F401,F403
from dynrcnn.report.claims import *  # noqa: F401,F403
from dynrcnn.report.results import *  # noqa: F401,F403
from dynrcnn.report.profiles import *  # noqa: F401,F403
from dynrcnn.report.tables import *  # noqa: F401,F403
from dynrcnn.report.text import *  # noqa: F401,F403
from dynrcnn.report.pipeline import *  # noqa: F401,F403
from dynrcnn.report.study import *  # noqa: F401,F403
from dynrcnn.report.studies.record import *  # noqa: F401,F403
import sys as _sys

_PUBLIC = ("evidence", "analysis", "curves", "claims", "results", "profiles", "tables", "text", "pipeline", "study",
           "studies.record")
__all__ = [name for m in _PUBLIC for name in _sys.modules[f"{__name__}.{m}"].__all__]
