"""The event storage: the one channel between a training step and the writers.

As detectron2's ``EventStorage`` (``detectron2/utils/events.py``): during training, the trainer
and its hooks *put* what they measured into one :class:`EventStorage`, and the writers
(:mod:`dynrcnn.engine.writers`: JSON lines, TensorBoard, Weights & Biases) *read* it. No hook
reads another hook's attributes or the trainer's to find a number to log, so the order in
which values reach a log record is the order of the hooks, visible in
:func:`dynrcnn.engine.hooks.default_hooks`, not a convention recorded in a comment.

Two kinds of events:

* **scalars** (``put_scalar(name, value)``): one number per name and iteration, e.g. ``loss``,
  ``lr``, ``val_AP``. The storage keeps the latest value of each name with the iteration it was
  put at (:meth:`EventStorage.latest`) and its whole history (:meth:`EventStorage.history`:
  scalars are put every ``log_period`` iterations, so the history stays small); ``None`` is a
  value ("not measured", written as JSON ``null``).
* **records** (``put_record(stream, record)``): a structured event of a named stream, e.g. one
  dynamic update of the head (``dynamic``) or one iteration's raw statistics (``stats``). A
  record is one line of that stream's JSON-lines file; the writers consume them in order with
  :meth:`EventStorage.pop_records`.

The storage holds no device tensor and does no host synchronisation: producers convert to
Python numbers when they put (at log time, see :class:`dynrcnn.engine.hooks.LogHook`).
"""

from __future__ import annotations

import math
from collections import defaultdict


class EventStorage:
    """Scalars and records of one training run, keyed by iteration (see the module docstring).

    ``iter`` is the current iteration (1-based: iterations done; the trainer advances it with
    :meth:`step` before each step); ``put_*`` stamp events with it unless given another.
    """

    def __init__(self, start_iter: int = 0):
        self.iter = start_iter
        self._history: dict[str, list[tuple[int, float | None]]] = defaultdict(list)
        self._latest: dict[str, tuple[float | None, int]] = {}
        self._records: dict[str, list[dict]] = defaultdict(list)

    def step(self, iteration: int | None = None) -> None:
        """Advance to ``iteration`` (default: the next one)."""
        self.iter = self.iter + 1 if iteration is None else int(iteration)

    # ---- scalars

    def put_scalar(self, name: str, value, iteration: int | None = None) -> None:
        """Record ``value`` (a number, or ``None``: not measured) of ``name`` at ``iteration``
        (default: the current one). Integers stay integers, other numbers become floats."""
        it = self.iter if iteration is None else int(iteration)
        if value is not None and not isinstance(value, int):
            value = float(value)
        self._history[name].append((it, value))
        self._latest[name] = (value, it)

    def put_scalars(self, iteration: int | None = None, **values) -> None:
        """:meth:`put_scalar` for each ``name=value``, in the order given."""
        for name, value in values.items():
            self.put_scalar(name, value, iteration)

    def latest(self) -> dict[str, tuple[float | None, int]]:
        """``{name: (value, iteration)}``: the last value put of every scalar, in the order the
        names were first put."""
        return dict(self._latest)

    def latest_at(self, iteration: int | None = None) -> dict[str, float | None]:
        """``{name: value}`` of the scalars last put at ``iteration`` (default: the current one)."""
        it = self.iter if iteration is None else iteration
        return {k: v for k, (v, i) in self._latest.items() if i == it}

    def latest_since(self, iteration: int) -> dict[str, float | None]:
        """``{name: value}`` of the scalars whose last value was put after ``iteration``, in the
        order the names were first put (what a writer has not written yet)."""
        return {k: v for k, (v, i) in self._latest.items() if i > iteration}

    def history(self, name: str) -> list[tuple[int, float | None]]:
        """``[(iteration, value), ...]`` of every value of ``name`` put so far ([] if none)."""
        return list(self._history.get(name, []))

    def values(self, name: str) -> list[float]:
        """The finite values of ``name``'s history (e.g. every logged ``sec_per_iter``)."""
        return [v for _, v in self._history.get(name, []) if v is not None and math.isfinite(v)]

    # ---- records

    def put_record(self, stream: str, record: dict) -> None:
        """Append ``record`` (JSON-serialisable, written as given) to ``stream``."""
        self._records[stream].append(record)

    def pop_records(self, stream: str) -> list[dict]:
        """The records of ``stream`` put since the last pop, oldest first (then forgotten)."""
        return self._records.pop(stream, [])

    def streams(self) -> list[str]:
        """The streams holding records not yet popped."""
        return [s for s, r in self._records.items() if r]


__all__ = ["EventStorage"]
