"""Weight schedules for the KL weight (beta) and the MI weight (lambda).

A schedule maps the optimizer step (an ``int`` >= 0) to a non-negative weight.
Schedules are pure and stateless: the position is the step itself, so a run
resumed from a checkpoint at step ``s`` sees exactly the weights it would have
seen without the interruption.

Kinds:

- ``constant``: ``value`` at every step.
- ``linear``: zero for the first ``delay_steps`` steps, then a linear ramp from
  ``start`` to ``value`` over ``warmup_steps`` steps, then ``value``
  (KL annealing of Bowman et al. 2016).
- ``cyclical``: the cyclical schedule of Fu et al. 2019 in the variant Optimus
  (Li et al. 2020, ``frange_cycle_zero_linear``) uses. ``total_steps`` is split
  into ``num_cycles`` equal cycles; within each cycle the weight is 0 for the
  first ``zero_ratio`` fraction, rises linearly from 0 to ``value`` over the next
  ``increase_ratio`` fraction and holds at ``value`` for the rest. Step for step it
  reproduces Optimus' schedule (same integer cycle boundaries). Past
  ``total_steps`` the weight stays at ``value``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

SCHEDULE_KINDS: tuple[str, ...] = ("constant", "linear", "cyclical")


@dataclass(frozen=True)
class WeightSchedule:
    """A weight as a function of the optimizer step: ``schedule(step) -> float``.

    Args:
        kind: one of ``"constant"``, ``"linear"``, ``"cyclical"``.
        value: the (final / maximum) weight, >= 0.
        warmup_steps: ``linear`` only: length of the ramp from ``start`` to ``value``.
        delay_steps: ``linear`` only: steps at weight 0 before the ramp begins.
        num_cycles: ``cyclical`` only: number of cycles over ``total_steps``.
        zero_ratio: ``cyclical`` only: fraction of each cycle held at 0.
        increase_ratio: ``cyclical`` only: fraction of each cycle spent rising to ``value``.
        total_steps: ``cyclical`` only (required there): the length of training in steps.
        start: ``linear`` only: the weight at the beginning of the ramp (default 0).
    """

    kind: str = "constant"
    value: float = 1.0
    warmup_steps: int = 0
    delay_steps: int = 0
    num_cycles: int = 1
    # Optimus' defaults (run_lm_vae_training.py: ratio_zero=0.5, ratio_increase=0.25).
    zero_ratio: float = 0.5
    increase_ratio: float = 0.25
    total_steps: int | None = None
    start: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"WeightSchedule.kind must be one of {', '.join(map(repr, SCHEDULE_KINDS))}; got {self.kind!r}."
            )
        for name in ("value", "start"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
                raise ValueError(f"WeightSchedule.{name} must be a finite number >= 0; got {number!r}.")
            if number < 0:
                raise ValueError(f"WeightSchedule.{name} must be >= 0 (a weight cannot be negative); got {number!r}.")
        for name in ("warmup_steps", "delay_steps"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("num_cycles", self.num_cycles, minimum=1)
        for name in ("zero_ratio", "increase_ratio"):
            ratio = getattr(self, name)
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
                raise ValueError(f"WeightSchedule.{name} must be a number in [0, 1]; got {ratio!r}.")
        if self.zero_ratio + self.increase_ratio > 1.0 + 1e-12:
            raise ValueError(
                "WeightSchedule.zero_ratio + increase_ratio must be <= 1 (they are fractions of one cycle); "
                f"got {self.zero_ratio} + {self.increase_ratio} = {self.zero_ratio + self.increase_ratio}."
            )
        if self.total_steps is not None:
            _check_int("total_steps", self.total_steps, minimum=1)
        if self.kind == "cyclical":
            if self.total_steps is None:
                raise ValueError(
                    "WeightSchedule.total_steps is required for kind='cyclical' "
                    "(the cycles are fractions of the whole run); got None."
                )
            if self.total_steps < self.num_cycles:
                raise ValueError(
                    f"WeightSchedule.total_steps must be >= num_cycles ({self.num_cycles}) for kind='cyclical'; "
                    f"got {self.total_steps}."
                )

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def constant(cls, value: float) -> WeightSchedule:
        """``value`` at every step."""
        return cls(kind="constant", value=value)

    @classmethod
    def linear(cls, value: float, warmup_steps: int, delay_steps: int = 0, start: float = 0.0) -> WeightSchedule:
        """0 for ``delay_steps``, then ``start`` -> ``value`` over ``warmup_steps``, then ``value``."""
        return cls(kind="linear", value=value, warmup_steps=warmup_steps, delay_steps=delay_steps, start=start)

    @classmethod
    def cyclical(
        cls,
        value: float,
        total_steps: int,
        num_cycles: int = 1,
        zero_ratio: float = 0.5,
        increase_ratio: float = 0.25,
    ) -> WeightSchedule:
        """Fu et al. 2019 / Optimus cyclical schedule over ``total_steps``."""
        return cls(
            kind="cyclical",
            value=value,
            total_steps=total_steps,
            num_cycles=num_cycles,
            zero_ratio=zero_ratio,
            increase_ratio=increase_ratio,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightSchedule:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"WeightSchedule got unknown field(s) {unknown}; allowed: {sorted(known)}.")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields (for configs and checkpoints)."""
        return asdict(self)

    # -- evaluation ---------------------------------------------------------------------------
    def __call__(self, step: int) -> float:
        """The weight at optimizer step ``step`` (0-based)."""
        if isinstance(step, bool) or not isinstance(step, int):
            # Accept numpy / torch integer scalars, but not floats: a fractional step is a bug.
            if hasattr(step, "__index__"):
                step = step.__index__()
            else:
                raise TypeError(f"step must be an int; got {type(step).__name__}.")
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}.")
        value = float(self.value)
        if self.kind == "constant":
            return value
        if self.kind == "linear":
            if step < self.delay_steps:
                return 0.0
            if self.warmup_steps == 0:
                return value
            progress = min(1.0, (step - self.delay_steps) / self.warmup_steps)
            return float(self.start) + (value - float(self.start)) * progress
        # cyclical
        assert self.total_steps is not None  # guaranteed by __post_init__
        if step >= self.total_steps:
            return value
        # Cycle c covers steps [floor(c * P), floor((c + 1) * P)) with P = total_steps / num_cycles,
        # exactly as Optimus' ``frange_cycle_zero_linear`` indexes ``int(i + c * period)``; the
        # cycle index is computed in integers so float rounding cannot shift a boundary.
        total, cycles = self.total_steps, self.num_cycles
        cycle = ((step + 1) * cycles - 1) // total
        position = step - (cycle * total) // cycles  # steps since the cycle began
        period = total / cycles
        if position < period * self.zero_ratio:
            return 0.0
        ramp_steps = period * self.increase_ratio
        if ramp_steps == 0.0:
            return value
        # The ramp starts at 0 on the first step of the rise (Optimus: v = start, then v += step).
        rise = position - math.ceil(period * self.zero_ratio)
        return value * min(1.0, rise / ramp_steps)


def _check_int(name: str, number: Any, minimum: int) -> None:
    # A ValueError for a wrong type too: the caller asked for one kind of error naming the field.
    if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
        raise ValueError(f"WeightSchedule.{name} must be an int >= {minimum}; got {number!r}.")


__all__ = ["SCHEDULE_KINDS", "WeightSchedule"]
