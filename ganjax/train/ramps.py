"""Hyper-parameter ramps over training: R3GAN's cosine schedules of the learning rates, Adam's beta2 and the
R1 / R2 gammas (brownvc/R3GAN, "The GAN is dead; long live the GAN!", NeurIPS 2024: on FFHQ-256 lr 2e-4 ->
5e-5, gamma 150 -> 15, beta2 0.9 -> 0.99 over 20M images).

A ramp takes a train-config field from its configured value (`train.<name>`) to `train.ramp_to.<name>` over
the first `train.ramp_kimg` thousand images, on the half cosine

    value(t) = base + (final - base) * (1 - cos(pi * t)) / 2,   t = min(images seen / (ramp_kimg * 1000), 1)

and holds the final value after. The fields that can ramp are the keys of `train.ramp_to` in the config
schema (ganjax/config.py); a key left None holds its base value. Values are computed inside the jitted step
from the state's step count, so a resumed run continues its ramps exactly and no ramp needs a recompile.
"""

import dataclasses
import math

import jax.numpy as jnp

# The ramps of the Adam optimizers: field -> (its network, None for both; optax.adam's argument). The step
# applies the lazy-regularisation scaling to the ramped value as to the constant one (ganjax/train/state.py).
OPTIMIZER = {"lr_g": ("G", "learning_rate"), "lr_d": ("D", "learning_rate"), "beta2": (None, "b2")}


@dataclasses.dataclass(frozen=True)
class Ramps:
    kimg: float
    ramps: tuple[tuple[str, float, float], ...]  # (field, base, final) of the fields that ramp

    @classmethod
    def from_config(cls, train) -> "Ramps":
        kimg = float(train.ramp_kimg)
        ramps = tuple((name, float(train[name]), float(final)) for name, final in train.ramp_to.items()
                      if final is not None)
        return cls(kimg, ramps if kimg > 0 else ())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.ramps)

    def optimizer_ramps(self, net: str) -> dict:
        """{field: optax.adam argument} of the ramps that change this network's Adam ("G" or "D")."""
        return {n: OPTIMIZER[n][1] for n in self.names if n in OPTIMIZER and OPTIMIZER[n][0] in (None, net)}

    def ramps_optimizer(self, net: str) -> bool:
        return bool(self.optimizer_ramps(net))

    def at(self, images) -> dict:
        """{field: its value} after `images` training images (a traced or host number)."""
        if not self.ramps:
            return {}
        t = jnp.clip(jnp.asarray(images, jnp.float32) / (self.kimg * 1000.0), 0.0, 1.0)
        w = (1.0 - jnp.cos(math.pi * t)) / 2
        return {name: base + (final - base) * w for name, base, final in self.ramps}
