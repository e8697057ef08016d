"""Pruning schedules: at which optimizer steps to prune, and how far towards the target.

A schedule answers two questions about a step `t` (the optimizer's `iterations`, so the step
survives `model.save()` and `keras.callbacks.BackupAndRestore` with the model):

- `should_prune(t)`: whether a pruning event happens before the optimizer step `t`;
- `progress(t)`: how far the model should be on its way to the target, in `[0, 1]`.

`Target.at(progress)` turns the progress into fractions to keep, so that, as in tfmot's
polynomial decay, `keep(t) = target + (1 - target) * (1 - p)^power` with
`p = (t - begin_step) / (end_step - begin_step)`.
"""

from __future__ import annotations

import math
import numbers
from typing import List, Optional

import keras

from tfprune.errors import InvalidScheduleError


def _step(cls, name, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidScheduleError(
            f"{cls}({name}=...) must be an integer number of optimizer steps; received "
            f"{value!r} of type {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise InvalidScheduleError(f"{cls}({name}={value}) must be >= {minimum}")
    return value


class PruningSchedule:
    """Base class of pruning schedules.

    Subclasses implement `should_prune(step)`, `progress(step)` and `get_config()`; `end_step`
    is the last step with an event (None when events never stop).
    """

    end_step: Optional[int] = None

    def should_prune(self, step: int) -> bool:
        raise NotImplementedError

    def progress(self, step: int) -> float:
        raise NotImplementedError

    def events(self, start: int, stop: int) -> List[int]:
        """The steps in `[start, stop)` at which the schedule prunes."""
        return [s for s in range(int(start), int(stop)) if self.should_prune(s)]

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="tfprune")
class PolynomialDecay(PruningSchedule):
    """Prunes every `frequency` steps from `begin_step` to `end_step`, fast first, then slowly.

    The fraction of the way to the target follows tfmot's polynomial decay:
    `progress(t) = 1 - (1 - p)^power`, `p = (t - begin_step) / (end_step - begin_step)`
    clipped to `[0, 1]`. Events happen at `begin_step + k * frequency` up to `end_step`, and
    always at `end_step` itself, so that the target is reached even when `end_step - begin_step`
    is not a multiple of `frequency` (tfmot stops short of it then).

    Args:
        begin_step: first optimizer step of the ramp (`>= 0`).
        end_step: the step at which the target is reached (`> begin_step`).
        frequency: steps between events (`>= 1`).
        power: exponent of the decay (`> 0`); 1 is linear, 3 is tfmot's default.

    Raises:
        InvalidScheduleError: `end_step <= begin_step`, or a value of the wrong type/range.

    Example:

    ```python
    import tfprune
    schedule = tfprune.PolynomialDecay(begin_step=0, end_step=1000, frequency=100)
    schedule.should_prune(300), round(schedule.progress(500), 3)    # (True, 0.875)
    ```
    """

    def __init__(self, begin_step: int = 0, end_step: int = 1000, frequency: int = 100,
                 power: float = 3.0):
        self.begin_step = _step("PolynomialDecay", "begin_step", begin_step)
        self.end_step = _step("PolynomialDecay", "end_step", end_step)
        if self.end_step <= self.begin_step:
            raise InvalidScheduleError(
                f"PolynomialDecay: end_step ({self.end_step}) must come after begin_step "
                f"({self.begin_step})")
        self.frequency = _step("PolynomialDecay", "frequency", frequency, minimum=1)
        if isinstance(power, bool) or not isinstance(power, numbers.Real) \
                or not math.isfinite(power) or power <= 0:
            raise InvalidScheduleError(
                f"PolynomialDecay(power={power!r}) must be a finite number > 0 (3 is tfmot's "
                "default, 1 is linear)")
        self.power = float(power)

    def should_prune(self, step):
        step = int(step)
        if not self.begin_step <= step <= self.end_step:
            return False
        return step == self.end_step or (step - self.begin_step) % self.frequency == 0

    def progress(self, step):
        p = (int(step) - self.begin_step) / (self.end_step - self.begin_step)
        p = min(max(p, 0.0), 1.0)
        return 1.0 - (1.0 - p) ** self.power

    def get_config(self):
        return {"begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency, "power": self.power}


@keras.saving.register_keras_serializable(package="tfprune")
class ConstantSparsity(PruningSchedule):
    """Prunes to the whole target at `begin_step`, then re-prunes every `frequency` steps.

    With tfprune's monotone masks a re-pruning event keeps the target met (it removes nothing
    once the target holds); methods whose masks may change use it to re-select.

    Args:
        begin_step: the step of the first event (`>= 0`).
        frequency: steps between events (`>= 1`).
        end_step: the last step with an event, or None for no end (tfmot's `end_step=-1`).

    Raises:
        InvalidScheduleError: `end_step < begin_step`, or a value of the wrong type/range.

    Example:

    ```python
    import tfprune
    schedule = tfprune.ConstantSparsity(begin_step=200, frequency=100)
    schedule.should_prune(200), schedule.progress(199), schedule.progress(200)
    # (True, 0.0, 1.0)
    ```
    """

    def __init__(self, begin_step: int = 0, frequency: int = 100,
                 end_step: Optional[int] = None):
        self.begin_step = _step("ConstantSparsity", "begin_step", begin_step)
        self.frequency = _step("ConstantSparsity", "frequency", frequency, minimum=1)
        if end_step is not None:
            end_step = _step("ConstantSparsity", "end_step", end_step)
            if end_step < self.begin_step:
                raise InvalidScheduleError(
                    f"ConstantSparsity: end_step ({end_step}) precedes begin_step "
                    f"({self.begin_step})")
        self.end_step = end_step

    def should_prune(self, step):
        step = int(step)
        if step < self.begin_step or (self.end_step is not None and step > self.end_step):
            return False
        return (step - self.begin_step) % self.frequency == 0

    def progress(self, step):
        return 1.0 if int(step) >= self.begin_step else 0.0

    def get_config(self):
        return {"begin_step": self.begin_step, "frequency": self.frequency,
                "end_step": self.end_step}


@keras.saving.register_keras_serializable(package="tfprune")
class OneShot(PruningSchedule):
    """Prunes once, to the whole target, before optimizer step `step`; fine-tunes after.

    Args:
        step: the optimizer step of the single event (`>= 0`; 0 prunes before training).

    Raises:
        InvalidScheduleError: a step that is not a non-negative integer.

    Example:

    ```python
    import tfprune
    schedule = tfprune.OneShot(step=0)
    schedule.should_prune(0), schedule.should_prune(1), schedule.progress(5)  # (True, False, 1.0)
    ```
    """

    def __init__(self, step: int = 0):
        self.step = _step("OneShot", "step", step)
        self.end_step = self.step

    def should_prune(self, step):
        return int(step) == self.step

    def progress(self, step):
        return 1.0 if int(step) >= self.step else 0.0

    def get_config(self):
        return {"step": self.step}
