"""Cumulative compute of a training run: model FLOPs, device-seconds and (with a price) money.

The training loop owns one CostMeter and merges `meter.update(step, seconds)` into the metrics it logs,
so sweeps can compare FID at equal compute. FLOPs are analytic (flops.train_flops_per_image: amortised
over the lazy regularisers), so they follow the images seen exactly; device-seconds are wall time x the
devices the run holds. On resume, construct the meter with the last logged `compute/device_seconds`.
"""

from ganjax.bench.flops import train_flops_per_image


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
