"""The training-time budget, owned by the fixed layer (train.py cannot stretch or shrink it).

Only time inside steps counts: each step is timed from `step_begin` to `step_end` (after an
optional device synchronize, so asynchronous GPU work is paid for by the step that queued it).
The first `warmup_steps` steps are not counted at all, as upstream autoresearch excludes its
compile and warm-up steps; evaluation, data preparation and anything between steps are outside
the budget. `expired` becomes true once the counted time reaches the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class BudgetClock:
    def __init__(self, budget_s: float, warmup_steps: int = 10,
                 time_fn: Callable[[], float] = time.perf_counter) -> None:
        if not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.budget_s = float(budget_s)
        self.warmup_steps = warmup_steps
        self._time_fn = time_fn
        self._step_started: float | None = None
        self._steps = 0
        self._training_s = 0.0
        self._warmup_s = 0.0
        self.last_step_s = 0.0

    def step_begin(self, synchronize: Callable[[], object] | None = None) -> None:
        if self._step_started is not None:
            raise RuntimeError("step_begin called twice without step_end")
        if synchronize is not None:
            synchronize()  # work queued before the step is not this step's
        self._step_started = self._time_fn()

    def step_end(self, synchronize: Callable[[], object] | None = None) -> float:
        """Close the step; returns its duration in seconds (counted or not)."""
        if self._step_started is None:
            raise RuntimeError("step_end called without step_begin")
        if synchronize is not None:
            synchronize()
        step_s = self._time_fn() - self._step_started
        self._step_started = None
        self._steps += 1
        self.last_step_s = step_s
        if self._steps > self.warmup_steps:
            self._training_s += step_s
        else:
            self._warmup_s += step_s
        return step_s

    @property
    def steps(self) -> int:
        """Steps completed, warm-up included."""
        return self._steps

    @property
    def training_s(self) -> float:
        """Seconds inside steps after the warm-up steps: what the budget is spent on."""
        return self._training_s

    @property
    def warmup_s(self) -> float:
        """Seconds inside the warm-up steps (compile, autotuning); not counted."""
        return self._warmup_s

    @property
    def fraction(self) -> float:
        """Share of the budget spent, 0..1 (what LR schedules read as progress)."""
        return min(self._training_s / self.budget_s, 1.0)

    @property
    def expired(self) -> bool:
        return self._training_s >= self.budget_s
