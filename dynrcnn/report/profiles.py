"""What ``dynrcnn report --profile NAME`` runs, and where the report's paths point.

A :class:`Profile` names a preset, the runs to train (:class:`RunSpec`: directory name,
method, seed, ``--set`` overrides), the dataset and where figures go. Run configs are
assembled by :func:`dynrcnn.presets.build_config`; this module only says *which* runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from dynrcnn.config import default_device
from dynrcnn.errors import DynrcnnError
from dynrcnn.io import CHECKOUT
from dynrcnn.data.mini import N_TRAIN, N_VAL
from dynrcnn.reference import DYNAMIC_RPN_NMS

REPO = CHECKOUT  # the checkout root, under its report name
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = ("01_data", "02_method", "03_train", "04_evaluate", "05_results", "06_mmdet", "07_controls", "08_trees", "09_premise")
#: the results notebook's figures that the summary page and README embed (file names in the figures folder)
FIGURE_FILES = {"trend": "trend.png", "ap_vs_iou": "ap_vs_iou.png", "detections_compare": "detections_compare.png",
                "tight_share": "tight_share.png", "seeds": "ablation_seeds.png"}


def step_output(kind: str, run_name: str) -> str:
    """The executed notebook's name of a run's ``train`` or ``evaluate`` step (``train_dynamic``)."""
    return f"{kind}_{run_name}"


def seed_run_name(name: str, seed: int) -> str:
    """The directory name of run ``name`` repeated with another seed (``<name>_seed<N>``)."""
    return name if int(seed) == 0 else f"{name}_seed{int(seed)}"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a profile: its directory name, method, seed and ``--set`` overrides."""

    name: str
    method: str
    seed: int = 0
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """What ``dynrcnn report --profile NAME`` runs.

    ``generate`` (train images, val images) means the miniature benchmark is generated into
    the data root when it is missing, at the preset's image size (:attr:`image_size`); ``None``
    means the data root must hold a COCO-format dataset. ``overrides`` apply to every run,
    ``stats_methods`` get ``log_stats=true`` (needed by the method notebook). :meth:`with_seeds`
    repeats the ``seed_runs`` with more training seeds; ``second_benchmark`` adds an evaluation
    benchmark.
    """

    name: str
    preset: str
    runs: tuple[RunSpec, ...]
    data_root: str | None
    generate: tuple[int, int] | None
    overrides: tuple[str, ...] = ()
    stats_methods: tuple[str, ...] = ("dynamic",)
    figures_dir: str | None = None  # relative to the repo; None: OUT/figures
    description: str = ""
    # the tag of README.md's results block these runs write (<!-- TAG:BEGIN --> ... <!-- TAG:END -->)
    # and its heading; None: none
    readme: str | None = None
    readme_title: str = "Results"
    seed_runs: tuple[str, ...] = ("baseline", "dynamic")  # runs repeated by ``extra_seeds``
    # (data seed, validation images) of a second benchmark every run is also evaluated on, so
    # that no verdict rests on one dataset; None: none
    second_benchmark: tuple[int, int] | None = None

    def with_seeds(self, extra_seeds=()) -> "Profile":
        """This profile plus the ``seed_runs`` repeated with each extra seed (``<name>_seed<N>``):
        the runs that let the report measure seed noise instead of assuming it."""
        have = {r.name for r in self.runs}
        extra = tuple(RunSpec(seed_run_name(r.name, s), r.method, int(s), r.overrides)
                      for s in extra_seeds for r in self.runs
                      if r.name in self.seed_runs and int(s) != r.seed and seed_run_name(r.name, s) not in have)
        return dataclasses.replace(self, runs=self.runs + extra) if extra else self

    def run_overrides(self, spec: RunSpec) -> list[str]:
        extra = ["log_stats=true"] if spec.method in self.stats_methods else []
        return [*self.overrides, *extra, *spec.overrides]

    @property
    def image_size(self) -> int:
        """Side of the generated images: the size the preset's model trains at (one home)."""
        from dynrcnn.presets import get_preset

        return get_preset(self.preset).model.min_size

    @property
    def default_device(self) -> str:
        """CPU for the generated benchmarks, a GPU when there is one for COCO."""
        return "cpu" if self.generate is not None else default_device()


NMS_085 = f"model.rpn_nms_thresh={DYNAMIC_RPN_NMS}"  # the paper's RPN NMS for Dynamic R-CNN
MINI_SEEDS = (0, 1, 2)  # training seeds of the controls' configurations
#: the primary comparison's pair (Dynamic R-CNN and the baseline at its RPN NMS) and their seeds: a paired
#: seed SD near 1 AP needs about 10 seeds to resolve a 1 AP difference (t(9) = 2.26)
HEADLINE_RUNS = (RunSpec("baseline_nms085", "baseline", overrides=(NMS_085,)),
                 RunSpec("dynamic", "dynamic", overrides=(NMS_085,)))
HEADLINE_SEEDS = 10
#: every other ablation row (the published baseline at RPN NMS 0.7, DLA alone, DSL alone) and their seeds
ABLATION_RUNS = (RunSpec("baseline", "baseline"), RunSpec("dla", "dla", overrides=(NMS_085,)),
                 RunSpec("dsl", "dsl", overrides=(NMS_085,)))
ABLATION_SEEDS = 5


def seeded_runs(specs: tuple[RunSpec, ...], seeds) -> tuple[RunSpec, ...]:
    """Each run repeated with each seed (``<name>_seed<N>``; seed 0 keeps the plain name),
    ordered seed by seed so that a partial report already has every configuration."""
    return tuple(RunSpec(seed_run_name(r.name, s), r.method, int(s), r.overrides) for s in seeds for r in specs)


def _mini_profile(name: str, preset: str, figures_dir: str, what: str = "", **readme) -> Profile:
    """A profile on the miniature benchmark: as in the paper, Dynamic R-CNN (and its DLA/DSL
    ablations) runs at RPN NMS 0.85 and the reference baseline at 0.7; the baseline at 0.85 is the
    fair comparison that separates the RPN NMS change from the method. The headline
    configurations are trained with MINI_SEEDS, DLA and DSL alone with one seed. ``readme`` holds
    the README block's ``readme`` tag and ``readme_title``."""
    return Profile(
        name=name,
        preset=preset,
        runs=seeded_runs((ABLATION_RUNS[0], *HEADLINE_RUNS, *ABLATION_RUNS[1:]), range(ABLATION_SEEDS))
        + seeded_runs(HEADLINE_RUNS, range(ABLATION_SEEDS, HEADLINE_SEEDS)),
        data_root="data/mini",
        generate=(N_TRAIN, N_VAL),
        figures_dir=figures_dir,
        description=f"miniature benchmark ({N_TRAIN}/{N_VAL} generated images), slim R10-FPN from the project's "
                    f"pretrained backbone{', ' + what if what else ''}, {HEADLINE_SEEDS} seeds for the headline "
                    f"pair, {ABLATION_SEEDS} for every other ablation row, CPU",
        seed_runs=("baseline", "baseline_nms085", "dynamic", "dla", "dsl"),
        second_benchmark=(2, 500),
        **readme,
    )


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        preset="mini_smoke",
        runs=(RunSpec("baseline", "baseline"), RunSpec("dynamic", "dynamic")),
        data_root="build/data/mini_smoke",
        generate=(48, 24),
        second_benchmark=(2, 12),
        overrides=("max_iter=30", "lr_steps=25", "warmup_iters=5", "checkpoint_period=30",
                   "log_period=5", "dynamic.interval=5", "eval_batch_size=8",
                   "model.backbone_weights=pretrained:mini_pretrain_smoke"),
        figures_dir=None,
        description="pipeline check: 48/24 generated images, 30 iterations per run; numbers meaningless",
    ),
    # the report of record (``make report``): 900-iteration fine-tunes, the length at which the
    # baseline's AP90 is measurable (docs/regime.md)
    "mini": _mini_profile("mini", "mini_long", "figures", what="900-iteration fine-tunes", readme="RESULTS"),
    # the same runs at 300 iterations (``make report-quick``): outside the regime (baseline AP90 ~3.5)
    "mini_quick": _mini_profile(
        "mini_quick", "mini", "figures/quick", what="300-iteration fine-tunes (quick profile, outside the regime: "
        "baseline AP90 too low to judge high-IoU claims)"),
    "coco": Profile(
        name="coco",
        preset="coco_r50_fpn_1x",
        runs=(RunSpec("baseline", "baseline"),
              RunSpec("dynamic", "dynamic", overrides=(NMS_085,))),
        data_root=None,
        generate=None,
        figures_dir="figures/coco",
        description="COCO 2017, R50-FPN 1x (paper recipe; Dynamic R-CNN with RPN NMS 0.85 as published)",
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise DynrcnnError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


def repo_path(p) -> Path:
    """A notebook parameter's path: relative paths are relative to the repository root, so a
    notebook means the same folders in Jupyter (whose working folder is ``notebooks/``), under
    papermill from any folder, and in the pipeline (installed copies fall back to the cwd)."""
    p = Path(str(p)).expanduser()
    if p.is_absolute():
        return p
    return (REPO if NOTEBOOK_DIR.is_dir() else Path.cwd()) / p


def param_path(p) -> str:
    """A path as the pipeline passes it to a notebook: relative to the repository root when
    inside it (:func:`repo_path` reads it back), else absolute; a rendered parameters cell then
    names no machine path."""
    from dynrcnn.io import relative_path

    return relative_path(p, REPO) if NOTEBOOK_DIR.is_dir() else relative_path(p)


def default_run_dir(profile: str, method: str, seed: int = 0) -> Path:
    """Where the train notebook puts a run when no ``run_dir`` is given (the pipeline's naming)."""
    return repo_path(Path("runs") / profile / seed_run_name(method, seed))


__all__ = ["REPO", "NOTEBOOK_DIR", "NOTEBOOKS", "FIGURE_FILES", "step_output", "RunSpec", "Profile", "PROFILES", "NMS_085", "get_profile",
           "HEADLINE_RUNS", "HEADLINE_SEEDS", "ABLATION_RUNS", "ABLATION_SEEDS", "repo_path", "param_path", "default_run_dir", "seed_run_name", "seeded_runs", "MINI_SEEDS"]
