"""BudgetClock: only time inside steps after the warm-up steps counts."""

import pytest

from shared_data.clock import BudgetClock


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def run_step(clock, fake, seconds, gap_after=0.0):
    clock.step_begin()
    fake.advance(seconds)
    clock.step_end()
    fake.advance(gap_after)  # time between steps (data loading, logging) is outside the budget


def test_warmup_steps_are_not_counted():
    fake = FakeTime()
    clock = BudgetClock(budget_s=10.0, warmup_steps=3, time_fn=fake)
    for _ in range(3):
        run_step(clock, fake, 5.0)  # slow steps, as compile makes them
    assert clock.steps == 3
    assert clock.training_s == 0.0
    assert clock.warmup_s == 15.0
    assert clock.fraction == 0.0 and not clock.expired
    run_step(clock, fake, 2.0)
    assert clock.training_s == 2.0
    assert clock.fraction == pytest.approx(0.2)


def test_time_outside_steps_is_not_counted_and_budget_expires():
    fake = FakeTime()
    clock = BudgetClock(budget_s=1.0, warmup_steps=0, time_fn=fake)
    run_step(clock, fake, 0.4, gap_after=100.0)
    run_step(clock, fake, 0.4, gap_after=100.0)
    assert clock.training_s == pytest.approx(0.8)
    assert not clock.expired
    run_step(clock, fake, 0.4)
    assert clock.expired
    assert clock.fraction == 1.0  # clamped
    assert clock.steps == 3
    assert clock.last_step_s == pytest.approx(0.4)


def test_default_warmup_is_ten_steps():
    fake = FakeTime()
    clock = BudgetClock(budget_s=5.0, time_fn=fake)
    for _ in range(10):
        run_step(clock, fake, 1.0)
    assert clock.training_s == 0.0
    run_step(clock, fake, 1.0)
    assert clock.training_s == 1.0


def test_synchronize_runs_inside_the_timed_step():
    fake = FakeTime()
    calls = []

    def synchronize():
        calls.append(fake.now)
        fake.advance(0.25)  # the device finishing queued work

    clock = BudgetClock(budget_s=10.0, warmup_steps=0, time_fn=fake)
    clock.step_begin()
    fake.advance(0.5)
    assert clock.step_end(synchronize=synchronize) == pytest.approx(0.75)
    assert clock.training_s == pytest.approx(0.75)
    assert len(calls) == 1


def test_misuse_raises():
    with pytest.raises(ValueError):
        BudgetClock(budget_s=0)
    with pytest.raises(ValueError):
        BudgetClock(budget_s=1, warmup_steps=-1)
    clock = BudgetClock(budget_s=1)
    with pytest.raises(RuntimeError):
        clock.step_end()
    clock.step_begin()
    with pytest.raises(RuntimeError):
        clock.step_begin()
