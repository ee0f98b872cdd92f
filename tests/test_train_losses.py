"""Losses, regularisers, EMA schedule and optimizer settings, on toy functions (no GAN compile)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ganjax.config import base_config
from ganjax.train import losses, state as state_lib
from ganjax.train import recipe
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
    # R2 (not in the reference) scales D's Adam only when on: with R1 every 16 too, D steps 1 + 2/16 times.
    t.r1_interval, t.r1_gamma, t.r2_interval, t.r2_gamma = 16, 10.0, 16, 0.0
    assert state_lib.adam_hparams(t, "d")["lr"] == pytest.approx(0.002 * 16 / 17, rel=1e-15)
    t.r2_gamma = 1.0
    assert state_lib.adam_hparams(t, "d")["lr"] == pytest.approx(0.002 * 8 / 9, rel=1e-15)


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
        r1_phase = jax.jit(lambda p: recipe.d_r1(it, jax.random.key(2), {"reals": reals}, {"d_params": p, "hparams": {}}))
        grads, aux, _ = r1_phase(params)

        def loss(p):
            return r1_phase(p)[1]["D/reg_loss"]

        # The loss is gamma/2 * interval * mean |grad_x D|^2, grad_x by central differences (float64), not by
        # ganjax's own gradient_penalty.
        d_sum = jax.jit(lambda x: jnp.sum(D.apply({"params": params}, x)))
        flat, h = np.asarray(reals).ravel(), 1e-6
        grad_x = np.empty_like(flat)
        for i in range(flat.size):
            up, down = flat.copy(), flat.copy()
            up[i] += h
            down[i] -= h
            grad_x[i] = (float(d_sum(up.reshape(reals.shape))) - float(d_sum(down.reshape(reals.shape)))) / (2 * h)
        penalty = np.sum(grad_x.reshape(reals.shape[0], -1) ** 2, axis=1)
        assert float(aux["D/reg_loss"]) == pytest.approx(5.0 * 16 * float(np.mean(penalty)), rel=1e-7)
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


def test_relativistic_pairing_losses_closed_form():
    real, fake = jnp.array([2.0, -1.0, 0.3]), jnp.array([0.5, -3.0, 0.3])
    (d,) = losses.d_adv_loss("relativistic", real, fake)
    np.testing.assert_allclose(d, np.log1p(np.exp(-(np.asarray(real) - np.asarray(fake)))), rtol=1e-6)
    g = losses.g_adv_loss("relativistic", fake, real)
    np.testing.assert_allclose(g, np.log1p(np.exp(-(np.asarray(fake) - np.asarray(real)))), rtol=1e-6)
    # d/dr mean softplus(-(r - f)) = -sigmoid(-(r - f)) / n: pairs enter only through their difference
    grad_r = jax.grad(lambda r: jnp.mean(losses.d_adv_loss("relativistic", r, fake)[0]))(real)
    np.testing.assert_allclose(grad_r, -1 / (1 + np.exp(np.asarray(real) - np.asarray(fake))) / 3, rtol=1e-6)


class TinyG(nn.Module):
    """z [B, k, z] -> images [B, 5, 5, 3], with the keyword arguments ganjax's G takes."""

    @nn.compact
    def __call__(self, z, train=False, noise_mode="random", style_mixing_prob=0.0, update_w_avg=False):
        h = nn.Dense(75, dtype=z.dtype, param_dtype=z.dtype)(z.reshape(z.shape[0], -1))
        return jnp.tanh(h).reshape(-1, 5, 5, 3)


def _toy_iteration(**train):
    c = base_config()
    for k, v in train.items():
        setattr(c.train, k, v)
    G, D = TinyG(), TinyD()
    z = jax.random.normal(jax.random.key(0), (4, 2, 3), jnp.float64)
    reals = jax.random.normal(jax.random.key(1), (4, 5, 5, 3), jnp.float64)
    g_params = G.init(jax.random.key(2), z)["params"]
    d_params = D.init(jax.random.key(3), reals)["params"]
    live = {"g_params": g_params, "g_buffers": {}, "d_params": d_params, "pl_mean": jnp.zeros(()), "hparams": {}}
    return Iteration(G, D, None, None, StepConfig.from_config(c)), z, reals, live


def _directional_fd(loss, params, grads, eps=1e-5):
    direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(9), x.shape, x.dtype), params)
    plus = jax.tree.map(lambda p, v: p + eps * v, params, direction)
    minus = jax.tree.map(lambda p, v: p - eps * v, params, direction)
    fd = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
    analytic = sum(float(jnp.vdot(g, v)) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    return analytic, fd


def test_r2_phase_is_the_penalty_at_the_fakes_and_its_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        it, z, _, live = _toy_iteration(r2_gamma=4.0, r2_interval=8)
        key = jax.random.key(4)
        phase = jax.jit(lambda dp: recipe.d_r2(it, key, {"z": z}, {**live, "d_params": dp}))
        grads, metrics, _ = phase(live["d_params"])
        # Independently: the fakes G makes from z, and |grad_x D(x)|^2 at them, times gamma/2 x interval.
        fakes = it.G.apply({"params": live["g_params"]}, z)
        sq = jax.grad(lambda x: jnp.sum(it.D.apply({"params": live["d_params"]}, x)))(fakes) ** 2
        expected = 2.0 * 8 * float(jnp.mean(jnp.sum(sq, axis=(1, 2, 3))))
        assert float(metrics["D/r2_loss"]) == pytest.approx(expected, rel=1e-12)
        analytic, fd = _directional_fd(lambda dp: phase(dp)[1]["D/r2_loss"], live["d_params"], grads)
        assert analytic == pytest.approx(fd, rel=1e-6) and abs(analytic) > 1e-3


def test_relativistic_g_loss_pairs_each_fake_with_its_real_and_its_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        it, z, reals, live = _toy_iteration(loss="relativistic", style_mixing_prob=0.0)
        key = jax.random.key(5)
        phase = jax.jit(lambda gp: recipe.g_main(it, key, {"z": z, "reals": reals}, {**live, "g_params": gp}))
        grads, metrics, _ = phase(live["g_params"])
        d = lambda x: it.D.apply({"params": live["d_params"]}, x)
        fake_logits, real_logits = d(it.G.apply({"params": live["g_params"]}, z)), d(reals)
        expected = np.mean(np.log1p(np.exp(-(np.asarray(fake_logits) - np.asarray(real_logits)))))
        assert float(metrics["G/loss"]) == pytest.approx(expected, rel=1e-12)
        analytic, fd = _directional_fd(lambda gp: phase(gp)[1]["G/loss"], live["g_params"], grads)
        assert analytic == pytest.approx(fd, rel=1e-6) and abs(analytic) > 1e-4


def test_relativistic_pairs_are_the_same_under_micro_batching():
    """Micro-batch j holds rows j, j+n, ... of both the latents and the reals, so fake i still meets real i:
    the mean over 2 micro-batches equals the full batch's."""
    with jax.enable_x64(True):
        full, z, reals, live = _toy_iteration(loss="relativistic", style_mixing_prob=0.0)
        micro, *_ = _toy_iteration(loss="relativistic", style_mixing_prob=0.0, grad_accum=2)
        batched = {"z": z, "reals": reals}
        d_main = recipe.PHASES["d_main"]
        phase = next(p for p in full.cfg.phases if p.spec is d_main)
        g1, m1, _ = full.run_phase(phase, jax.random.key(6), batched, live)
        g2, m2, _ = micro.run_phase(phase, jax.random.key(6), batched, live)
        assert float(m2["D/loss"]) == pytest.approx(float(m1["D/loss"]), rel=1e-12)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
