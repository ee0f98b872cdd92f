"""How long a run is, and when its evaluations fall: a length in kimg, or a compute budget.

A run's length is exactly one of the `train` fields in LENGTHS set > 0 (the others 0):
- `total_kimg`: thousands of real images, as in every GAN codebase;
- `total_pflops`: the cumulative training compute of the cost meter (analytic FLOPs: images seen x the
  amortised FLOPs per image, ganjax/train/cost.py). The run ends at the first step whose cumulative
  compute reaches the budget, so it lands within one step of it, and two runs with different per-image
  costs get the same compute and different step counts;
- `total_device_hours`: the cost meter's device-seconds (wall time x the devices held, compiles included);
- `total_cost`: the same in money, at train.price_per_device_hour.
The last two are wall-clock budgets: the step where they run out depends on the machine, so they are not
reproducible step for step (a resumed run continues from the meter's logged device-seconds).

A run's progress is the fraction of its length done (1 at the end). Evaluation (EvalSchedule) is due every
eval.every_kimg images, every eval.every_pflops of compute, at the fractions eval.at_fractions of the length,
and at the last step; with a compute budget, runs of one sweep are scored at the same compute fractions.
"""

import math

from ganjax.models.config import ModelConfig
from ganjax.train import intervals
from ganjax.train.cost import train_flops_per_image

# train.<field> -> the unit its value is in. Exactly one is > 0.
LENGTHS = {"total_kimg": "kimg", "total_pflops": "PFLOPs", "total_device_hours": "device-hours",
           "total_cost": "money (at train.price_per_device_hour)"}
WALL_CLOCK = ("total_device_hours", "total_cost")


def parse_fractions(text) -> tuple[float, ...]:
    """'0.25,0.5,1' -> (0.25, 0.5, 1.0): sorted, each in (0, 1]; '' -> ()."""
    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{text!r}: {item!r} is not a number (a comma list of fractions in (0, 1])")
        if not 0 < value <= 1:
            raise ValueError(f"{text!r}: {item} is not in (0, 1] (fractions of the run's length)")
        out.append(value)
    return tuple(sorted(set(out)))


def chosen(train) -> str:
    """The field that sets the run's length (validated: exactly one is > 0)."""
    return next(name for name in LENGTHS if float(train[name]) > 0)


def problems(config) -> list[str]:
    """Exactly one length; a money budget needs a price; a compute budget of at least one step."""
    t = config.train
    given = [name for name in LENGTHS if float(t[name]) > 0]
    if len(given) != 1:
        fields = ", ".join(f"config.train.{name}={t[name]!r}" for name in (given or LENGTHS))
        fix = ("set one; a compute budget needs config.train.total_kimg=0 (the presets set a kimg length)"
               if given else "set one of them > 0")
        return [f"config.train: a run's length is one of {', '.join(LENGTHS)}; got {fields}: {fix}"]
    if given == ["total_cost"] and float(t.price_per_device_hour) <= 0:
        return [f"config.train.total_cost: {t.total_cost!r} needs config.train.price_per_device_hour > 0 "
                f"(the budget is counted in device-hours at that price)"]
    if given == ["total_pflops"]:
        try:
            step = int(t.batch_size) * train_flops_per_image(ModelConfig.from_config(config.model), t) / 1e15
        except ValueError:
            return []  # the model section's own problem is reported by its check
        if float(t.total_pflops) < step:
            return [f"config.train.total_pflops: {t.total_pflops!r} is less than one training step "
                    f"({step:.6g} PFLOPs at batch {t.batch_size})"]
    return []


def reached(train, kimg: float, pflops: float, device_seconds: float) -> bool:
    """Whether a run whose metrics logged these totals has reached its length (reports read it back)."""
    field, value = chosen(train), float(train[chosen(train)])
    got = {"total_kimg": kimg, "total_pflops": pflops, "total_device_hours": device_seconds / 3600,
           "total_cost": device_seconds / 3600 * float(train.price_per_device_hour)}[field]
    return got >= value * (1 - 1e-9)


class RunLength:
    """The run's length (validated config) and progress through it."""

    def __init__(self, config):
        t = config.train
        self.field = chosen(t)
        self.value = float(t[self.field])
        self.batch = int(t.batch_size)
        self.flops_per_image = train_flops_per_image(ModelConfig.from_config(config.model), t)
        self.price = float(t.price_per_device_hour)
        per_step = {"total_kimg": 1000.0, "total_pflops": 1e15 / self.flops_per_image}.get(self.field)
        # Steps to the end where that is known up front (kimg and compute budgets): the first step that
        # reaches the length.
        self.exact_steps = self.value * per_step / self.batch if per_step else None
        self.total_steps = max(1, math.ceil(self.exact_steps - 1e-9)) if per_step else None
        if self.field == "total_device_hours":
            self.budget_seconds = self.value * 3600
        elif self.field == "total_cost":
            self.budget_seconds = self.value / self.price * 3600
        else:
            self.budget_seconds = None

    @property
    def wall_clock(self) -> bool:
        return self.field in WALL_CLOCK

    def pflops(self, step: int) -> float:
        """Cumulative training compute after `step` iterations."""
        return step * self.batch * self.flops_per_image / 1e15

    def progress(self, step: int, device_seconds: float) -> float:
        """Fraction of the length done after `step` iterations and `device_seconds` of the meter."""
        if self.wall_clock:
            return device_seconds / self.budget_seconds
        return step / self.exact_steps

    def finished(self, step: int, device_seconds: float) -> bool:
        if self.wall_clock:
            return device_seconds >= self.budget_seconds
        return step >= self.total_steps

    def describe(self) -> str:
        if self.field == "total_kimg":
            return f"{self.value:g} kimg"
        if self.field == "total_pflops":
            return f"{self.value:g} PFLOPs: {self.total_steps} steps, {self.total_steps * self.batch / 1000:g} kimg"
        hours = self.budget_seconds / 3600
        if self.field == "total_cost":
            return f"{self.value:g} at {self.price:g} per device-hour ({hours:g} device-hours)"
        return f"{hours:g} device-hours"


class EvalSchedule:
    """When periodic evaluation is due: every eval.every_kimg images, every eval.every_pflops of compute, at
    the fractions eval.at_fractions of the run's length (the first step at or past each), and at the last
    step. Wall-clock lengths place the fractions by the device-seconds passed to due()."""

    def __init__(self, config, length: RunLength, device_seconds: float = 0.0):
        e = config.eval
        self.length = length
        self.every_images = intervals.images(e.every_kimg, "eval.every_kimg") if float(e.every_kimg) > 0 else 0
        self.every_pflops = float(e.every_pflops)
        self.fractions = parse_fractions(e.at_fractions)
        self._seconds = float(device_seconds)  # the meter at the previous call (wall-clock fractions)

    @staticmethod
    def enabled(config) -> bool:
        e = config.eval
        return float(e.every_kimg) > 0 or float(e.every_pflops) > 0 or bool(parse_fractions(e.at_fractions))

    def due(self, step: int, final: bool, device_seconds: float = 0.0) -> bool:
        """After iteration `step` - 1 ran; `final`: it is the run's last step."""
        before_seconds, self._seconds = self._seconds, float(device_seconds)
        if step <= 0:
            return False
        if final:
            return True
        if self.every_images and intervals.crossed(step - 1, step, self.length.batch, self.every_images):
            return True
        if self.every_pflops and (math.floor(self.length.pflops(step) / self.every_pflops)
                                  > math.floor(self.length.pflops(step - 1) / self.every_pflops)):
            return True
        if self.length.wall_clock:
            before = self.length.progress(step - 1, before_seconds)
            now = self.length.progress(step, device_seconds)
            return any(before < f <= now for f in self.fractions)
        # the first step at or past f x the exact step count (a tolerance for the float product)
        return any(step - 1 < f * self.length.exact_steps - 1e-9 <= step for f in self.fractions)
