"""What training computes and what it costs: model FLOPs per phase, per iteration variant and per amortised
iteration (the recipe's phases on the layer walk of ganjax/models/flops.py), and the CostMeter the loop
keeps (cumulative FLOPs, device-seconds and, with a price, money), which `ganjax bench`, `ganjax plan` and
the sweeps read too.

A "FLOP" is one multiply or one add, XLA's convention. FLOPs are analytic, so they follow the images seen
exactly; device-seconds are wall time x the devices the run holds (compiling included: the devices are held
then too). On resume the meter continues from the last logged `compute/device_seconds`.
"""

from ganjax.models.flops import model_flops
from ganjax.train.recipe import recipe


def phase_flops_per_image(model_cfg, train) -> dict[str, float]:
    """Training FLOPs per image each running phase consumes (recipe.PhaseSpec.flops_per_image)."""
    f = model_flops(model_cfg)
    return {p.name: p.spec.flops_per_image(f, train) for p in recipe(train) if p.rate > 0}


def iteration_flops(model_cfg, train, batch_size: int) -> dict[str, float]:
    """FLOPs of each running phase's step at this global batch, and of one amortised iteration (each phase
    weighted by how often it runs)."""
    f = model_flops(model_cfg)
    out, amortised = {}, 0.0
    for p in recipe(train):
        if p.rate > 0:
            images = max(int(batch_size * p.spec.batch_fraction(train)), 1)  # floor, as the phase slices
            out[p.name] = p.spec.flops_per_image(f, train) * images
            amortised += out[p.name] * p.rate
    out["iteration"] = amortised
    return out


def variant_flops(model_cfg, train, batch_size: int, firing: tuple[str, ...]) -> float:
    """FLOPs of one iteration that runs the every-step phases and the lazy ones in `firing`."""
    per = iteration_flops(model_cfg, train, batch_size)
    return sum(per[p.name] for p in recipe(train) if p.rate > 0 and (not p.spec.lazy or p.name in firing))


def train_flops_per_image(model_cfg, train) -> float:
    """Amortised training FLOPs per real image the loop consumes (one global batch per iteration): the
    loop's cumulative compute is images_seen x this."""
    b = int(train.batch_size)
    return iteration_flops(model_cfg, train, b)["iteration"] / b


class CostMeter:
    def __init__(self, model_cfg, train_cfg, num_devices: int, device_seconds: float = 0.0):
        self.flops_per_image = train_flops_per_image(model_cfg, train_cfg)
        self.batch_size = int(train_cfg.batch_size)
        self.price = float(train_cfg.price_per_device_hour)
        self.num_devices = int(num_devices)
        self.device_seconds = float(device_seconds)

    def update(self, step: int, seconds: float) -> dict:
        """Add `seconds` of wall time on all devices; metrics after `step` iterations (a host int)."""
        self.device_seconds += seconds * self.num_devices
        out = {"compute/pflops": step * self.batch_size * self.flops_per_image / 1e15,
               "compute/device_seconds": self.device_seconds,
               "compute/device_hours": self.device_seconds / 3600}
        if self.price > 0:
            out["compute/cost"] = self.device_seconds / 3600 * self.price
        return out
