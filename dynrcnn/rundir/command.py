"""The ``dynrcnn`` command a run records: the one line that trains it again, whoever trained it.

A run trained from a notebook or a script has no command line of its own (``sys.argv`` is
``ipykernel_launcher.py -f /tmp/....json``), so ``env.json`` records the equivalent
``dynrcnn train`` command, built from the resolved config: the preset, method, seed, data
folder and run directory, and one ``--set`` for every setting that differs from the preset's.
A resume records ``dynrcnn train --resume RUN_DIR`` (the run's ``config.json`` holds the rest),
with a ``--set`` for each setting that may change on a resume and did.
"""

from __future__ import annotations

import json
import shlex

from dynrcnn.config import flat_dict


def set_value(value) -> str:
    """A value as ``--set`` parses it back (:func:`dynrcnn.config.apply_overrides`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(set_value(v) for v in value)
    return str(value)


def config_overrides(cfg, ignore=("method", "seed", "data_root", "preset", "lr")) -> list[str]:
    """``key=value`` for every setting of ``cfg`` that differs from its preset's (``ignore``:
    keys the command passes by their own flag; ``lr`` is resolved by the engine from the
    preset's unless it was set, which ``cfg.lr`` as given by the caller says)."""
    from dynrcnn.errors import ConfigError
    from dynrcnn.presets import get_preset

    try:
        base = get_preset(cfg.preset)
    except (ConfigError, KeyError, ValueError):
        base = type(cfg)()
    have = flat_dict(json.loads(json.dumps(cfg.to_dict())))
    default = flat_dict(json.loads(json.dumps(base.to_dict())))
    return [f"{k}={set_value(v)}" for k, v in have.items()
            if k not in ignore and default.get(k, object()) != v]


def train_command(cfg, run_dir) -> str:
    """The ``dynrcnn train`` command that trains ``cfg`` (as the caller gave it, before the
    engine resolved the learning rate) into ``run_dir``."""
    ignore = ("method", "seed", "data_root", "preset") + (("lr",) if cfg.lr is None else ())
    words = ["dynrcnn", "train", "--preset", cfg.preset, "--method", cfg.method, "--seed", str(cfg.seed)]
    if cfg.data_root:
        words += ["--data-root", str(cfg.data_root)]
    words += ["--out", str(run_dir)]
    for item in config_overrides(cfg, ignore):
        words += ["--set", item]
    return shlex.join(words)


def resume_command(run_dir, changed: dict | None = None) -> str:
    """``dynrcnn train --resume RUN_DIR`` plus ``--set key=value`` for each ``changed`` setting
    (those that may change on a resume)."""
    words = ["dynrcnn", "train", "--resume", str(run_dir)]
    for k, v in (changed or {}).items():
        words += ["--set", f"{k}={set_value(v)}"]
    return shlex.join(words)


__all__ = ["train_command", "resume_command", "config_overrides", "set_value"]
