"""Losses, regularisers, EMA schedule and optimizer settings, on toy functions (no GAN compile)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ganjax.config import base_config
from ganjax.train import losses, state as state_lib
from ganjax.train.step import Iteration, StepConfig


def test_adversarial_losses():
    real, fake = jnp.array([2.0, -1.0]), jnp.array([0.5, -3.0])
    np.testing.assert_allclose(losses.g_adv_loss("logistic", fake), np.log1p(np.exp(-np.array([0.5, -3.0]))),
                               rtol=1e-6)
    r, f = losses.d_adv_loss("logistic", real, fake)
    np.testing.assert_allclose(r, np.log1p(np.exp(-np.array([2.0, -1.0]))), rtol=1e-6)
    np.testing.assert_allclose(f, np.log1p(np.exp(np.array([0.5, -3.0]))), rtol=1e-6)
    np.testing.assert_allclose(losses.g_adv_loss("hinge", fake), [-0.5, 3.0])
    r, f = losses.d_adv_loss("hinge", real, fake)
    np.testing.assert_allclose(r, [0.0, 2.0])
    np.testing.assert_allclose(f, [1.5, 0.0])
    with pytest.raises(ValueError, match="train.loss"):
        losses.g_adv_loss("wgan", fake)


def test_ema_half_life_and_rampup():
    # After ema_kimg*1000 images the old average keeps half its weight.
    beta = float(losses.ema_beta(jnp.array(10_000), 32, 10.0, 0.0))
    assert beta ** (10_000 / 32) == pytest.approx(0.5, rel=1e-4)
    # Ramp-up: at 100 steps of 32 images with rampup 0.05 the half-life is 160 images, not 10 kimg.
    beta = float(losses.ema_beta(jnp.array(100), 32, 10.0, 0.05))
    assert beta == pytest.approx(0.5 ** (32 / 160), rel=1e-6)
    assert float(losses.ema_beta(jnp.array(0), 32, 10.0, 0.05)) == 0.0  # step 0: copy G


def test_lazy_regularisation_scaling_matches_reference():
    """StyleGAN2-ADA / GANsformer scale both Adams by their intervals whatever the regulariser weights."""
    t = base_config().train
    t.lr_g = t.lr_d = 0.002
    t.r1_interval, t.r1_gamma, t.pl_weight, t.pl_interval = 16, 10.0, 0.0, 4
    g, d = state_lib.adam_hparams(t, "g"), state_lib.adam_hparams(t, "d")
    assert g["lr"] == pytest.approx(0.002 * 0.8) and g["b2"] == pytest.approx(0.99 ** 0.8)  # PL off: still 4/5
    assert g["b1"] == 0.0
    assert d["lr"] == pytest.approx(0.002 * 16 / 17) and d["b2"] == pytest.approx(0.99 ** (16 / 17))
    t.r1_gamma = 0.0  # weight 0 does not change the scaling
    assert state_lib.adam_hparams(t, "d")["lr"] == pytest.approx(0.002 * 16 / 17)
    t.pl_interval = t.r1_interval = 0  # interval 0: no lazy phase, no scaling
    assert state_lib.adam_hparams(t, "g")["lr"] == 0.002 and state_lib.adam_hparams(t, "d")["lr"] == 0.002


def test_adam_matches_torch():
    torch = pytest.importorskip("torch")
    t = base_config().train
    g_opt, _ = state_lib.make_optimizers(t)
    p0 = np.linspace(-1, 1, 6).astype(np.float32)
    grads = [np.sin(np.arange(6) + i).astype(np.float32) * 10 ** -i for i in range(3)]
    p, s = jnp.asarray(p0), g_opt.init(jnp.asarray(p0))
    update = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(*g_opt.update(g, s, p)))
    tp = torch.nn.Parameter(torch.tensor(p0))
    h = state_lib.adam_hparams(t, "g")  # lazy-scaled lr and betas
    topt = torch.optim.Adam([tp], lr=h["lr"], betas=(h["b1"], h["b2"]), eps=t.eps)
    for g in grads:
        p, s = update(jnp.asarray(g), s, p)
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(np.asarray(p), tp.detach().numpy(), atol=1e-7)


class TinyD(nn.Module):
    @nn.compact
    def __call__(self, img, train=False):
        h = nn.Conv(4, (3, 3), dtype=img.dtype, param_dtype=img.dtype)(img)
        h = jnp.tanh(h).mean((1, 2))
        return nn.Dense(1, dtype=img.dtype, param_dtype=img.dtype)(h)[:, 0]


def test_r1_phase_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        c = base_config()
        c.train.r1_gamma, c.train.r1_interval = 10.0, 16
        cfg = StepConfig.from_config(c)
        D = TinyD()
        reals = jax.random.normal(jax.random.key(0), (3, 5, 5, 3), jnp.float64)
        params = D.init(jax.random.key(1), reals)["params"]
        it = Iteration(None, D, None, None, cfg)
        r1_phase = jax.jit(lambda p: it._d_r1(jax.random.key(2), reals, p))
        grads, aux = r1_phase(params)

        def loss(p):
            return r1_phase(p)[1]["D/reg_loss"]

        # The loss is gamma/2 * interval * mean |grad_x D|^2.
        penalty = losses.r1_penalty(lambda x: D.apply({"params": params}, x), reals)
        assert float(aux["D/reg_loss"]) == pytest.approx(5.0 * 16 * float(jnp.mean(penalty)), rel=1e-12)
        direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(3), x.shape, x.dtype), params)
        eps = 1e-5
        plus = jax.tree.map(lambda p, v: p + eps * v, params, direction)
        minus = jax.tree.map(lambda p, v: p - eps * v, params, direction)
        fd = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
        analytic = sum(float(jnp.vdot(g, v)) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        assert analytic == pytest.approx(fd, rel=1e-6)
        assert abs(analytic) > 1e-3  # a real, non-vanishing gradient


def test_path_length_of_a_linear_synthesis():
    # img = reshape(w A): J^T y = A y per w-row, so lengths are exact.
    key = jax.random.key(0)
    a = jax.random.normal(key, (4, 2 * 2 * 3))
    ws = jax.random.normal(jax.random.key(1), (5, 1, 3, 4))
    synth = lambda w: jnp.einsum("bkld,de->be", w, a).reshape(-1, 2, 2, 3)
    lengths = jax.jit(lambda w: losses.path_lengths(synth, w, jax.random.key(2)))(ws)
    noise = jax.random.normal(jax.random.key(2), (5, 2, 2, 3)) / 2.0
    g = jnp.einsum("de,be->bd", a, noise.reshape(5, -1))  # the same for every (k, layer)
    np.testing.assert_allclose(lengths, jnp.sqrt(jnp.sum(g ** 2, -1)), rtol=1e-5)
