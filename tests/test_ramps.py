"""Hyper-parameter ramps (ganjax/train/ramps.py) against the half-cosine closed form, in the config, the
presets, and inside the train step (the values Adam and the penalties get at each iteration)."""

import math

import jax
import numpy as np
import pytest

from ganjax import parallel, presets
from ganjax.config import ConfigError, validate
from ganjax.train import setup
from ganjax.train.ramps import Ramps
from ganjax.train.recipe import lazy_ratio
from test_config import load
from test_train_step import reals, tiny_config


def cosine(base, final, images, length):
    """R3GAN's ramp written out: base + (final - base) * (1 - 0.5 * (1 + cos(pi * t))), t clipped to [0, 1]."""
    t = min(images / length, 1.0)
    return base + (1 - 0.5 * (1 + math.cos(math.pi * t))) * (final - base)


def ramped(**train):
    c = tiny_config(**train)
    c.train.ramp_kimg = 0.032  # 4 iterations of 8 images
    return c


def test_ramp_values_follow_the_half_cosine_and_hold_after():
    c = ramped()
    c.train.ramp_to.lr_g, c.train.ramp_to.r1_gamma = 5e-4, 1.0
    r = Ramps.from_config(c.train)
    assert r.names == ("lr_g", "r1_gamma")
    for images in (0, 5, 8, 16, 24, 32, 40, 1000):
        got = {k: float(v) for k, v in r.at(images).items()}
        # float32 evaluation of cos and the blend: a few ulps of the values
        assert got["lr_g"] == pytest.approx(cosine(0.002, 5e-4, images, 32), rel=1e-6)
        assert got["r1_gamma"] == pytest.approx(cosine(10.0, 1.0, images, 32), rel=1e-6)
    assert float(r.at(16)["lr_g"]) == pytest.approx((0.002 + 5e-4) / 2, rel=1e-6)  # halfway at half the length
    assert Ramps.from_config(tiny_config().train).at(100) == {}  # no ramps: nothing computed


def test_bad_ramps_are_refused_naming_the_field():
    c = tiny_config()
    c.train.ramp_to.lr_d = 1e-4
    with pytest.raises(ConfigError, match=r"config.train.ramp_to.lr_d: set to 0.0001 but config.train.ramp_kimg"):
        validate(c)
    c = ramped()
    c.train.ramp_to.beta2 = 1.0
    with pytest.raises(ConfigError, match=r"config.train.ramp_to.beta2: 1.0 is not in \[0, 1\)"):
        validate(c)
    c = ramped()
    c.train.ramp_to.r2_gamma = 1.0  # R2 is off (r2_gamma 0)
    with pytest.raises(ConfigError, match=r"config.train.ramp_to.r2_gamma: set to 1.0 but config.train.r2_gamma is 0.0"):
        validate(c)


@pytest.mark.parametrize("family", ["gansformer", "stylegan2"])
def test_r3gan_recipe_preset(family):
    t = validate(load(family).get_config("ffhq256,recipe=r3gan")).train
    assert (t.loss, t.r1_gamma, t.r2_gamma, t.r1_interval, t.r2_interval) == ("relativistic", 150.0, 150.0, 1, 1)
    assert (t.lr_g, t.lr_d, t.beta1, t.beta2) == (2e-4, 2e-4, 0.0, 0.9)
    assert dict(t.ramp_to) == dict(lr_g=5e-5, lr_d=5e-5, beta2=0.99, r1_gamma=15.0, r2_gamma=15.0)
    assert t.ramp_kimg == 20000.0 and t.total_kimg >= t.ramp_kimg
    cpu = validate(load(family).get_config("shapes32,recipe=r3gan")).train
    assert cpu.ramp_kimg == cpu.total_kimg == presets.CPU["shapes32"]["total_kimg"]
    reference = load(family).get_config("shapes32").train
    assert reference.loss == "logistic" and reference.ramp_kimg == 0


def test_ramps_reach_adam_and_the_penalties_in_the_step():
    """4 iterations with lr_g, lr_d, beta2 and both gammas ramping, R1 and R2 every iteration: each
    iteration's Adam hyper-parameters (lazily scaled) and the penalties' weights are the closed form at the
    images seen before it."""
    c = ramped(r1_interval=1, r2_gamma=4.0, r2_interval=1, lr_g=0.002, lr_d=0.003)
    to = c.train.ramp_to
    to.lr_g, to.lr_d, to.beta2, to.r1_gamma, to.r2_gamma = 1e-3, 1e-4, 0.999, 1.0, 0.5
    validate(c)
    c.model.attention_dropout = 0.0
    tr = setup.build(c, parallel.make_mesh(c, jax.devices()[:1]))
    state, batch = tr.init_state(), reals(tr.batch_sharding)
    ratio = {net: lazy_ratio(tr.train_step.cfg.phases, net) for net in ("G", "D")}
    assert ratio["G"] == 4 / 5 and ratio["D"] == 1.0  # G: path length off but scaling (reference); D: R1 + R2 every step
    for step in range(5):
        images = step * 8
        state, m = tr.train_step(state, batch, step)
        lr_g, lr_d = cosine(0.002, 1e-3, images, 32), cosine(0.003, 1e-4, images, 32)
        b2 = cosine(0.99, 0.999, images, 32)
        g_hp, d_hp = state.g_opt_state.hyperparams, state.d_opt_state.hyperparams
        assert float(g_hp["learning_rate"]) == pytest.approx(lr_g * 0.8, rel=1e-6)
        assert float(d_hp["learning_rate"]) == pytest.approx(lr_d, rel=1e-6)
        assert float(g_hp["b2"]) == pytest.approx(b2 ** 0.8, rel=1e-6)
        assert float(d_hp["b2"]) == pytest.approx(b2, rel=1e-6)
        assert float(m["lr/g"]) == pytest.approx(lr_g * 0.8, rel=1e-6)
        # The penalties' losses are gamma/2 x their penalty (interval 1).
        for name, base, final in (("r1", 10.0, 1.0), ("r2", 4.0, 0.5)):
            loss_key = "D/reg_loss" if name == "r1" else "D/r2_loss"
            gamma = cosine(base, final, images, 32)
            assert float(m[loss_key]) == pytest.approx(gamma / 2 * float(m[f"D/{name}_penalty"]), rel=1e-5)
        assert np.isfinite(float(m["G/loss"])) and float(m["skipped"]) == 0.0
