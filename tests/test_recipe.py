"""A training recipe is data (ganjax/train/recipe.py): a new phase is one function and one PHASES entry, and
the step variants, their schedule, the optimizers' lazy scaling, the FLOP count, the bench's programs and
the scaling model's collectives all follow from it. Shown with a toy regulariser on D (zero weight, every 3
iterations) beside R1 every 2; nothing here compiles (tracing and shapes only)."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import pytest

from ganjax import parallel
from ganjax.bench import scaling
from ganjax.models import ModelConfig
from ganjax.models.flops import model_flops
from ganjax.train import cost, programs, recipe, setup
from ganjax.train.state import adam_hparams
from ganjax.train.step import StepConfig
from test_train_step import tiny_config


def d_toy(it, key, inputs, live):
    """0 x mean D(reals): a penalty with no effect, so only the plumbing is tested."""
    def loss_fn(dp):
        penalty = jnp.mean(it.discriminate(dp, inputs["reals"], it.device_key(key), live))
        return 0.0 * penalty, penalty

    (_, penalty), grads = jax.value_and_grad(loss_fn, has_aux=True)(live["d_params"])
    return grads, {"D/toy_penalty": penalty}, {}


TOY = recipe.PhaseSpec("d_toy", "D", ("reals",), ("D",), True, "toy", d_toy, lambda f, t: 3 * f.d,
                       lambda t: (3, True))


@pytest.fixture
def toy_config(monkeypatch):
    keys_before = recipe.phase_keys(jax.random.key(0))
    monkeypatch.setitem(recipe.PHASES, "d_toy", TOY)
    keys_after = recipe.phase_keys(jax.random.key(0))
    # A phase added at the end leaves the existing phases' random streams as they were.
    for name, k in keys_before.items():
        assert (jax.random.key_data(keys_after[name]) == jax.random.key_data(k)).all()
    return tiny_config(r1_interval=2)


def test_a_toy_phase_fires_on_its_schedule_and_scales_ds_optimizer(toy_config):
    cfg = StepConfig.from_config(toy_config)
    assert [p.name for p in cfg.running] == ["g_main", "d_main", "d_r1", "d_toy"]
    assert [cfg.fires(s) for s in range(7)] == [("d_r1", "d_toy"), (), ("d_r1",), ("d_toy",), ("d_r1",), (),
                                                ("d_r1", "d_toy")]
    assert cfg.variant_weights() == {(): 2 / 6, ("d_r1",): 2 / 6, ("d_toy",): 1 / 6, ("d_r1", "d_toy"): 1 / 6}
    # D's optimizer steps 1 + 1/2 + 1/3 times per iteration: lr x 6/11, betas ^ 6/11.
    t = toy_config.train
    assert adam_hparams(t, "d")["lr"] == t.lr_d * float(Fraction(6, 11))
    assert adam_hparams(t, "d")["b2"] == t.beta2 ** float(Fraction(6, 11))


def test_a_toy_phase_is_counted_by_the_flop_model_and_the_scaling_model(toy_config):
    m, t = toy_config.model, toy_config.train
    f = model_flops(ModelConfig.from_config(m))
    per = cost.iteration_flops(ModelConfig.from_config(m), t, 8)
    assert per["d_toy"] == pytest.approx(3 * f.d * 8)
    assert per["iteration"] == pytest.approx(per["g_main"] + per["d_main"] + per["d_r1"] / 2 + per["d_toy"] / 3)
    ops = scaling.analytic_ops("dp", f.g_params, f.d_params, recipe.recipe(t))
    assert [(o.buffer_bytes, o.weight) for o in ops][-1] == (4.0 * f.d_params, 1 / 3)


def test_a_toy_phase_is_in_the_step_variants_and_the_bench_programs(toy_config):
    tr = setup.build(toy_config, parallel.make_mesh(toy_config, jax.devices()[:1]))
    iterations = {p.name: (p.weight, p.firing) for p in programs.iteration_programs(tr)}
    assert iterations == {"plain": (2 / 6, ()), "r1": (2 / 6, ("d_r1",)), "toy": (1 / 6, ("d_toy",)),
                          "r1+toy": (1 / 6, ("d_r1", "d_toy"))}
    assert {p.name: p.weight for p in programs.phase_programs(tr)}["d_toy"] == pytest.approx(1 / 3)
    state, reals = tr.abstract_state(), programs.abstract_reals(tr)
    _, metrics = jax.eval_shape(tr.train_step.variant(("d_toy",)), state, reals)
    assert {"D/toy_penalty", "grad_norm/d_toy"} <= set(metrics) and "D/r1_penalty" not in metrics
    _, metrics = jax.eval_shape(tr.train_step.variant(()), state, reals)
    assert "D/toy_penalty" not in metrics



def test_regularisers_every_iteration_share_their_networks_main_step():
    """Interval 1: the penalty's gradient is summed into its network's main Adam step (R3GAN's one D loss),
    which adds no optimizer step to scale for; interval N > 1: its own step every N iterations."""
    def steps(**train):
        return [tuple(p.name for p in group) for group in
                recipe.optimizer_steps(StepConfig.from_config(tiny_config(**train)).running)]

    assert steps(r1_interval=1, r2_gamma=1.0, r2_interval=1) == [("g_main",), ("d_main", "d_r1", "d_r2")]
    assert steps(r1_interval=16, r2_gamma=1.0, r2_interval=1) == [("g_main",), ("d_main", "d_r2"), ("d_r1",)]
    assert steps(pl_weight=2.0, pl_interval=1) == [("g_main", "g_pl"), ("d_main",), ("d_r1",)]
    t = tiny_config(r1_interval=1, r2_gamma=1.0, r2_interval=1).train
    assert adam_hparams(t, "d")["lr"] == t.lr_d and adam_hparams(t, "g")["lr"] == t.lr_g * 0.8  # PL every 4, off
    t = tiny_config(r1_interval=16, r2_gamma=1.0, r2_interval=1).train
    assert adam_hparams(t, "d")["lr"] == t.lr_d * float(Fraction(16, 17))
