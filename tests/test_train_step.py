"""The jitted train step: the global strategies agree with one device with the presets' randomness and
minibatch-std groups, shard_map with one device by its regrouping, FSDP memory, lazy schedule, no recompiles,
non-finite skips (through the batch, G's loss and the path length), gradient accumulation. Tiny models (16x16,
<= 16 channels, batch 8)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ganjax import parallel
from ganjax.config import base_config
from ganjax.train import losses, setup
from ganjax.train.state import TrainState


def tiny_config(strategy="dp", data=-1, fsdp=1, model=1, mbstd_group=1, attention_dropout=0.0, **train):
    c = base_config()
    m = c.model
    m.resolution, m.channel_base, m.channel_max = 16, 256, 16
    m.num_local, m.z_dim, m.w_dim = 2, 8, 8
    m.mapping_layers, m.attention_end_res = 1, 8
    m.mbstd_group, m.attention_dropout = mbstd_group, attention_dropout
    t = c.train
    t.batch_size = 8
    for k, v in train.items():
        setattr(t, k, v)
    p = c.parallel
    p.strategy, p.mesh_data, p.mesh_fsdp, p.mesh_model = strategy, data, fsdp, model
    return c


def deterministic(**train):
    """Randomness inside the models off (const noise, no mixing, no dropout), so a per-device program
    (shard_map) and micro-batches see exactly what one global batch sees; z is drawn globally anyway."""
    # Adam eps 1e-4 instead of 1e-8: some gradients are exactly zero in exact arithmetic (the bias of the
    # mapping attention's keys shifts every logit alike), and Adam would blow their rounding noise (~1e-10)
    # up to a full lr-sized step whose sign depends on the reduction order. Real gradients are >> 1e-4.
    return dict(noise_mode="const", style_mixing_prob=0.0, eps=1e-4, **train)


def preset_randomness(**train):
    """The presets' settings for everything random or batch-coupled: random noise, style mixing 0.9, attention
    dropout 0.12, minibatch-std groups of 4 (Adam eps as `deterministic`). One global program draws the same
    bits however its arrays are sharded (JAX's threefry is partitionable) and groups the same samples
    (ganjax.nn.mbstd), so dp, fsdp and fsdp_tp must reproduce one device with all of it on."""
    return dict(noise_mode="random", style_mixing_prob=0.9, eps=1e-4, mbstd_group=4, attention_dropout=0.12, **train)


def reals(sharding, seed=5):
    x = jax.random.uniform(jax.random.key(seed), (8, 16, 16, 3), minval=-1.0, maxval=1.0)
    return jax.device_put(x, sharding)


def host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def labels_for(tr, batch=8):
    """A conditional config's batch labels (classes 0, 1, ... cycled), laid out as the loader's; else ()."""
    n = tr.model_cfg.num_classes
    if not n:
        return ()
    sharding = jax.sharding.NamedSharding(tr.mesh, P(*tr.batch_sharding.spec[:1]))
    return (jax.device_put(jnp.arange(batch, dtype=jnp.int32) % n, sharding),)


def run_steps(c, devices, steps, *, aot=False):
    mesh = parallel.make_mesh(c, devices)
    tr = setup.build(c, mesh)
    state = tr.init_state()
    batch = (reals(tr.batch_sharding),) + labels_for(tr)
    metrics, compiled = [], None
    for i in range(steps):
        if aot and compiled is None:
            compiled = tr.train_step.variant(tr.train_step.cfg.fires(i)).lower(state, *batch).compile()
        fn = compiled if aot else (lambda s, *b, i=i: tr.train_step(s, b[0], i, *b[1:]))
        state, m = fn(state, *batch)
        metrics.append(host(m))
    return tr, state, metrics, compiled


@pytest.fixture(scope="module")
def one_device_reference():
    """3 steps (R1 every step) of the tiny GAN on 1 device with the models' randomness off and minibatch-std
    group 1: what the per-device shard_map program must reproduce."""
    _, state, metrics, _ = run_steps(tiny_config("dp", **deterministic(r1_interval=1)), jax.devices()[:1], 3)
    return host((state.g_params, state.d_params, state.g_ema_params)), metrics


@pytest.fixture(scope="module")
def one_device_preset_reference():
    """The same 3 steps with the presets' randomness and minibatch-std groups of 4: what every global strategy
    must reproduce."""
    _, state, metrics, compiled = run_steps(tiny_config("dp", **preset_randomness(r1_interval=1)),
                                            jax.devices()[:1], 3, aot=True)
    return host((state.g_params, state.d_params, state.g_ema_params)), metrics, compiled


def assert_same_run(ref, state, metrics, name):
    """Losses and metrics of every step within float32 rounding of the reference's, final params within 1e-4."""
    ref_params, ref_metrics = ref[:2]
    for step, (a, b) in enumerate(zip(ref_metrics, metrics)):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=f"{name} step {step} {k}")
    params = host((state.g_params, state.d_params, state.g_ema_params))
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params)))
    assert diff < 1e-4, f"{name}: params differ by {diff}"


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
@pytest.mark.parametrize("name,layout", [
    ("dp=8", ("dp", -1, 1, 1)),
    ("fsdp=8", ("fsdp", 1, -1, 1)),
    # Tensor parallel: params used gathered over fsdp (an XLA partitioner workaround, see
    # ganjax.parallel.rules.compute_sharding); without it G's images differ by up to 1.2 (of 4.4).
    ("dp2xfsdp2xtp2", ("fsdp_tp", 2, 2, 2)),
])
def test_global_strategies_match_one_device_with_the_presets_randomness(one_device_preset_reference, name, layout):
    """The same 3 steps on 8 devices under each global strategy, with random noise, style mixing, attention
    dropout and minibatch-std groups of 4 (which span devices: 1 sample per device under dp=8), give the
    1-device losses and parameters."""
    tr, state, metrics, compiled = run_steps(tiny_config(*layout, **preset_randomness(r1_interval=1)), jax.devices(),
                                             3, aot=name == "fsdp=8")
    assert_same_run(one_device_preset_reference, state, metrics, name)
    if name == "dp2xfsdp2xtp2":
        # Still tensor parallel: conv output channels and attention projections stay split over 'model' in
        # the layout the step computes with (only the 'fsdp' split of the stored params is gathered).
        layer = tr.state_shardings.g_params["synthesis_network"]["b8"]["conv1"]
        for sharding, stored, used in [(layer["weight"], P(None, None, "fsdp", "model"), P(None, None, None, "model")),
                                       (layer["transformer"]["to_queries"]["weight"], P("fsdp", "model"),
                                        P(None, "model"))]:
            assert sharding.spec == stored and parallel.compute_sharding(sharding).spec == used

    if name == "fsdp=8":
        # Every sharded leaf holds 1/8 per device; in total each device holds ~1/8 of the state.
        total = sum(x.nbytes for x in jax.tree.leaves(state))
        per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
        spec = tr.state_shardings.d_opt_state[0].mu
        assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(spec))
        assert per_device < total / 8 * 1.25, (per_device, total)
        # The compiled step's inputs (state + batch shard) per device, vs the 1-device program.
        one = one_device_preset_reference[2].memory_analysis().argument_size_in_bytes
        eight = compiled.memory_analysis().argument_size_in_bytes
        assert eight < one / 8 * 1.25, (eight, one)


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
def test_shard_map_groups_each_device_alone(one_device_reference):
    """The per-device shard_map program on 8 devices, configured with minibatch-std groups of 4: each device holds
    one sample, so each is its own group (ganjax.nn.mbstd.groups), and the 3 steps equal one device's with
    group 1 (the models' randomness off: per-device keys draw other bits than one global program)."""
    _, state, metrics, _ = run_steps(tiny_config("shard_map", mbstd_group=4, **deterministic(r1_interval=1)),
                                     jax.devices(), 3)
    assert_same_run(one_device_reference, state, metrics, "shard_map")


# all a skipped iteration must leave as it was: every field but the counters the caller advances or it counts
STATE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainState) if f.name not in ("step", "rng", "skips"))


def assert_skipped(before, after, m):
    """The iteration was skipped: counted, and every field of the train state unchanged but the step."""
    assert float(m["skipped"]) == 1.0 and int(m["consecutive_skips"]) == int(before.skips) + 1
    for name in STATE_FIELDS:
        for x, y in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name))):
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert int(after.step) == int(before.step) + 1  # the iteration still counts (its batch was consumed)


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
def test_lazy_schedule_no_recompiles_and_nan_skip():
    """R1 and path length fire at steps 0, 2, 4, 6 (interval 2); after both variants compiled, further steps
    compile nothing; a NaN batch (step 3) is skipped (params and optimizer state unchanged) and counted; a NaN
    entering only through the path-length phase (its running mean, at step 6, where it fires) is skipped too,
    while the plain step after it, which has no path-length phase, runs."""
    c = tiny_config(r1_interval=2, pl_weight=2.0, pl_interval=2)
    mesh = parallel.make_mesh(c, jax.devices()[:1])
    tr = setup.build(c, mesh)
    state = tr.init_state()
    batch = reals(tr.batch_sharding)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration"
        else None)
    seen, recompiles = [], 0
    bad = batch.at[0, 0, 0, 0].set(jnp.nan)
    for step in range(8):
        if step == 6:
            state = state.replace(pl_mean=jnp.full_like(state.pl_mean, jnp.nan))
        n = len(compiles)
        before = host(state)
        state, m = tr.train_step(state, bad if step == 3 else batch, step)
        if step >= 2:  # both variants were compiled by steps 0 and 1
            recompiles += len(compiles) - n
        if step in (3, 6):
            assert_skipped(before, host(state), m)
            if step == 3:
                assert np.isnan(float(m["D/loss"]))
            else:  # G's main phase, before the path length, was finite; the NaN came in at the path length
                assert np.isfinite(float(m["G/loss"])) and np.isnan(float(m["G/pl_penalty"]))
        else:
            assert float(m["skipped"]) == 0.0 and int(m["consecutive_skips"]) == 0
        seen.append(set(m))
    assert [("D/r1_penalty" in s, "G/pl_penalty" in s) for s in seen] == [(True, True), (False, False)] * 4
    assert len(compiles) >= 2 and recompiles == 0, f"steps 2-7 compiled {recompiles} programs"
    assert np.isnan(float(host(state.pl_mean)))  # step 7 ran without reading it
    assert int(host(state.skips)) == 0  # a finite step resets the run of skips


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
def test_a_nan_in_gs_loss_discards_the_whole_iteration(monkeypatch):
    """G's adversarial phase runs first in an iteration (ganjax.train.recipe.PHASES). A NaN in its loss value
    alone (added with no gradient, so G's update and every phase after it stay finite) discards the whole
    iteration, D's finite update after it included. (A NaN gradient would reach D's phase through G's updated
    params, as the path-length case in test_lazy_schedule_no_recompiles_and_nan_skip shows.)"""
    g_adv_loss = losses.g_adv_loss
    monkeypatch.setattr(losses, "g_adv_loss", lambda *a: g_adv_loss(*a) + jax.lax.stop_gradient(jnp.nan))
    c = tiny_config(r1_gamma=0.0)
    tr = setup.build(c, parallel.make_mesh(c, jax.devices()[:1]))
    state = tr.init_state()
    before = host(state)
    state, m = tr.train_step(state, reals(tr.batch_sharding), 0)
    assert np.isnan(float(m["G/loss"])) and np.isfinite(float(m["D/loss"]))
    for phase in ("g_main", "d_main"):
        assert np.isfinite(float(m[f"grad_norm/{phase}"])) and float(m[f"grad_norm/{phase}"]) > 0
    assert_skipped(before, host(state), m)


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
def test_grad_accumulation_equals_full_batch():
    """2 strided micro-batches of 4 give the full batch's step, minibatch-std groups of 4 included: micro-batch j
    holds rows j, j + 2, ..., the samples of one of the whole batch's groups (ganjax.nn.mbstd). (The models'
    randomness is off: each micro-batch draws from its own key.)"""
    train = deterministic(r1_interval=1)
    _, s1, m1, _ = run_steps(tiny_config(mbstd_group=4, **train), jax.devices()[:1], 1)
    _, s4, m4, _ = run_steps(tiny_config(mbstd_group=4, grad_accum=2, **train), jax.devices()[:1], 1)
    for k in m1[0]:
        np.testing.assert_allclose(m4[0][k], m1[0][k], rtol=1e-5, atol=1e-7, err_msg=k)
    for x, y in zip(jax.tree.leaves(host(s1)), jax.tree.leaves(host(s4))):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
