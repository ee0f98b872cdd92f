"""The augmentation probability p: off, fixed, or adapted from D's overfitting (StyleGAN2-ADA).

Adaptive mode keeps {'p', 'signs'} in the train state (TrainState.augment), so a checkpoint holds it and
a resumed run continues with the same p (StyleGAN2-ADA's training loop restarts it from its initial value).
Every iteration adds the batch mean of sign(D(augmented reals)) from D's main phase to 'signs'; every
`interval` iterations their mean r_t is compared with the target and p moves by
    sign(r_t - target) * batch_size * interval / (speed_kimg * 1000),
so p can go from 0 to 1 in speed_kimg thousand images, clipped to [0, 1]. r_t near 1 means D scores almost
every augmented real as real: it is overfitting, and more augmentation is needed.
"""

import dataclasses

import jax.numpy as jnp

from ganjax.augment import ops as ops_lib

MODES = ("off", "ada", "fixed")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    mode: str  # off | ada (p adapted, in the train state) | fixed (p constant)
    ops: tuple[str, ...]
    p: float  # the initial p (ada) or the constant one (fixed)
    target: float
    interval: int
    speed_kimg: float

    @classmethod
    def from_config(cls, a) -> "AugmentConfig":
        if a.mode not in MODES:
            raise ValueError(f"augment.mode: must be one of {MODES}, got {a.mode!r}")
        return cls(mode=a.mode, ops=ops_lib.parse_ops(a.ops), p=float(a.p), target=float(a.target),
                   interval=int(a.interval), speed_kimg=float(a.speed_kimg))

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def init_state(self) -> dict:
        """TrainState.augment of a fresh run: empty unless adaptive (so such states and their checkpoints
        have no augmentation leaves)."""
        if self.mode != "ada":
            return {}
        return {"p": jnp.asarray(self.p, jnp.float32), "signs": jnp.zeros((), jnp.float32)}

    def probability(self, state: dict):
        """p at this iteration."""
        return state["p"] if self.mode == "ada" else jnp.asarray(self.p, jnp.float32)

    def adjust(self, state: dict, signs_real, step, batch_size: int) -> dict:
        """The state after iteration `step` (0-based, traced), which measured `signs_real`, the batch mean of
        sign(D(real)): p moves at the end of every interval-th iteration."""
        if self.mode != "ada":
            return state
        signs = state["signs"] + signs_real
        due = (step + 1) % self.interval == 0
        rate = batch_size * self.interval / (self.speed_kimg * 1000.0)
        moved = jnp.clip(state["p"] + jnp.sign(signs / self.interval - self.target) * rate, 0.0, 1.0)
        return {"p": jnp.where(due, moved, state["p"]), "signs": jnp.where(due, 0.0, signs)}

    def __call__(self, images, key, state: dict):
        """The augmented images (every image D sees goes through this when augmentation is on)."""
        return ops_lib.augment(images, key, self.probability(state), self.ops)
