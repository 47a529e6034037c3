"""Tests for mine_vae.schedules: values at known steps, Optimus' cyclical reference, validation."""

from __future__ import annotations

import dataclasses
import math

import pytest

from mine_vae.schedules import WeightSchedule


def frange_cycle_zero_linear(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio_increase=0.5, ratio_zero=0.3):
    """Optimus' reference implementation (examples/big_ae/utils.py), transcribed without numpy."""
    values = [stop] * n_iter
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio_increase)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            if i < period * ratio_zero:
                values[int(i + c * period)] = start
            else:
                values[int(i + c * period)] = v
                v += step
            i += 1
    return values


def test_constant() -> None:
    schedule = WeightSchedule.constant(0.7)
    assert [schedule(s) for s in (0, 1, 10**9)] == [0.7, 0.7, 0.7]


def test_linear_warmup_and_delay() -> None:
    schedule = WeightSchedule.linear(2.0, warmup_steps=10, delay_steps=5)
    assert schedule(0) == 0.0 and schedule(4) == 0.0  # delay: held at zero
    assert schedule(5) == 0.0  # ramp starts at `start`
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(15) == pytest.approx(2.0)
    assert schedule(1000) == 2.0
    values = [schedule(s) for s in range(30)]
    assert values == sorted(values)  # monotone


def test_linear_with_start_and_no_warmup() -> None:
    ramp = WeightSchedule.linear(1.0, warmup_steps=4, start=0.2)
    assert [ramp(s) for s in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert WeightSchedule.linear(0.5, warmup_steps=0)(0) == 0.5
    assert WeightSchedule.linear(0.5, warmup_steps=0, delay_steps=3)(2) == 0.0


def test_cyclical_shape_within_cycles() -> None:
    schedule = WeightSchedule.cyclical(1.0, total_steps=400, num_cycles=4, zero_ratio=0.5, increase_ratio=0.25)
    # cycle length 100: 0 for [0, 50), rise over [50, 75), 1 over [75, 100)
    for cycle in range(4):
        base = 100 * cycle
        assert schedule(base) == 0.0
        assert schedule(base + 49) == 0.0
        assert schedule(base + 50) == 0.0
        assert schedule(base + 60) == pytest.approx(0.4)
        assert schedule(base + 74) == pytest.approx(0.96)
        assert schedule(base + 75) == 1.0
        assert schedule(base + 99) == 1.0
    assert schedule(400) == 1.0 and schedule(10_000) == 1.0  # past the end: hold at the maximum


@pytest.mark.parametrize(
    ("total", "cycles", "zero", "increase", "value"),
    [
        (1000, 4, 0.3, 0.5, 1.0),
        (1000, 1, 0.5, 0.25, 0.5),
        (997, 3, 0.25, 0.5, 1.0),
        (120, 2, 0.0, 1.0, 1.0),
        (101, 7, 0.33, 0.33, 2.0),
        (50, 50, 0.5, 0.5, 1.0),
    ],
)
def test_cyclical_matches_optimus(total: int, cycles: int, zero: float, increase: float, value: float) -> None:
    reference = frange_cycle_zero_linear(total, 0.0, value, cycles, increase, zero)
    schedule = WeightSchedule.cyclical(value, total, num_cycles=cycles, zero_ratio=zero, increase_ratio=increase)
    ours = [schedule(s) for s in range(total)]
    # Step for step, up to the float accumulation in Optimus' `v += step`.
    assert ours == pytest.approx(reference, abs=1e-9)


def test_cyclical_zero_increase_is_a_step() -> None:
    schedule = WeightSchedule.cyclical(1.0, total_steps=10, zero_ratio=0.5, increase_ratio=0.0)
    assert [schedule(s) for s in range(10)] == [0.0] * 5 + [1.0] * 5


def test_pure_and_resumable() -> None:
    schedule = WeightSchedule.cyclical(1.0, total_steps=100, num_cycles=2)
    first = [schedule(s) for s in range(100)]
    # No state: evaluating again, in any order, or on an equal copy gives the same numbers.
    assert [schedule(s) for s in reversed(range(100))][::-1] == first
    assert [WeightSchedule.from_dict(schedule.to_dict())(s) for s in range(100)] == first
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.value = 2.0  # type: ignore[misc]


def test_step_validation() -> None:
    schedule = WeightSchedule.constant(1.0)
    with pytest.raises(ValueError, match="step"):
        schedule(-1)
    with pytest.raises(TypeError):
        schedule(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "cosine"}, "kind"),
        ({"value": -0.1}, "value"),
        ({"value": math.nan}, "value"),
        ({"kind": "linear", "start": -1.0}, "start"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"delay_steps": -5}, "delay_steps"),
        ({"num_cycles": 0}, "num_cycles"),
        ({"zero_ratio": 1.5}, "zero_ratio"),
        ({"increase_ratio": -0.1}, "increase_ratio"),
        ({"zero_ratio": 0.7, "increase_ratio": 0.5}, "zero_ratio \\+ increase_ratio"),
        ({"kind": "cyclical"}, "total_steps"),
        ({"kind": "cyclical", "total_steps": 3, "num_cycles": 4}, "total_steps"),
        ({"total_steps": 0}, "total_steps"),
    ],
)
def test_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        WeightSchedule(**kwargs)


def test_kind_error_lists_allowed() -> None:
    with pytest.raises(ValueError, match="'constant', 'linear', 'cyclical'"):
        WeightSchedule(kind="exp")


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="warmup"):
        WeightSchedule.from_dict({"kind": "linear", "warmup": 10})


def test_cyclical_matches_optimus_on_random_configurations() -> None:
    import random

    rng = random.Random(0)
    for _ in range(40):
        cycles = rng.randint(1, 6)
        total = rng.randint(cycles, 400)
        zero = round(rng.uniform(0, 0.9), 3)
        increase = round(rng.uniform(0.01, 1 - zero), 3)
        reference = frange_cycle_zero_linear(total, 0.0, 1.0, cycles, increase, zero)
        schedule = WeightSchedule.cyclical(1.0, total, num_cycles=cycles, zero_ratio=zero, increase_ratio=increase)
        assert [schedule(s) for s in range(total)] == pytest.approx(reference, abs=1e-9), (
            total,
            cycles,
            zero,
            increase,
        )
