"""The jitted train step: strategies agree with one device, FSDP memory, lazy schedule, no recompiles,
non-finite skips, gradient accumulation. Tiny models (16x16, <= 16 channels, batch 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ganjax import parallel
from ganjax.config import base_config
from ganjax.train import setup


def tiny_config(strategy="dp", data=-1, fsdp=1, model=1, **train):
    c = base_config()
    m = c.model
    m.resolution, m.channel_base, m.channel_max = 16, 256, 16
    m.num_local, m.z_dim, m.w_dim = 2, 8, 8
    m.mapping_layers, m.attention_end_res = 1, 8
    m.mbstd_group = 1
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
    c.model.attention_dropout = 0.0
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
    """3 steps (R1 every step) of the tiny GAN on 1 device: the result every strategy must reproduce."""
    _, state, metrics, compiled = run_steps(tiny_config("dp", **deterministic(r1_interval=1)), jax.devices()[:1], 3,
                                            aot=True)
    return host((state.g_params, state.d_params, state.g_ema_params)), metrics, compiled


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
@pytest.mark.parametrize("name,layout", [
    ("dp=8", ("dp", -1, 1, 1)),
    ("fsdp=8", ("fsdp", 1, -1, 1)),
    ("shard_map", ("shard_map", -1, 1, 1)),
    # Tensor parallel: params used gathered over fsdp (an XLA partitioner workaround, see
    # ganjax.parallel.rules.compute_sharding); without it G's images differ by up to 1.2 (of 4.4).
    ("dp2xfsdp2xtp2", ("fsdp_tp", 2, 2, 2)),
])
def test_strategies_match_one_device(one_device_reference, name, layout):
    """The same 3 steps on 8 devices under each strategy give the 1-device losses and parameters."""
    ref_params, ref_metrics, ref_compiled = one_device_reference
    tr, state, metrics, compiled = run_steps(tiny_config(*layout, **deterministic(r1_interval=1)), jax.devices(), 3,
                                             aot=name == "fsdp=8")
    for step, (a, b) in enumerate(zip(ref_metrics, metrics)):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=f"{name} step {step} {k}")
    params = host((state.g_params, state.d_params, state.g_ema_params))
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params)))
    assert diff < 1e-4, f"{name}: params differ by {diff}"

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
        one = ref_compiled.memory_analysis().argument_size_in_bytes
        eight = compiled.memory_analysis().argument_size_in_bytes
        assert eight < one / 8 * 1.25, (eight, one)


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
def test_lazy_schedule_no_recompiles_and_nan_skip():
    """R1 and path length fire at steps 0, 2, 4 (interval 2); after both variants compiled, further steps
    compile nothing; a NaN batch is skipped (params and optimizer state unchanged) and counted."""
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
    for step in range(5):
        n = len(compiles)
        if step == 3:
            before = host(state)
            state, m = tr.train_step(state, bad, step)
            recompiles += len(compiles) - n
            after = host(state)
            assert float(m["skipped"]) == 1.0 and int(m["consecutive_skips"]) == 1
            for name in ("g_params", "d_params", "g_ema_params", "g_buffers", "g_opt_state", "d_opt_state"):
                for x, y in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name))):
                    np.testing.assert_array_equal(x, y, err_msg=name)
            assert int(after.step) == 4  # the iteration still counts (its batch was consumed)
            seen.append(set(m))
            continue
        state, m = tr.train_step(state, batch, step)
        if step >= 2:  # both variants were compiled by steps 0 and 1
            recompiles += len(compiles) - n
        assert float(m["skipped"]) == 0.0 and int(m["consecutive_skips"]) == 0
        seen.append(set(m))
    assert [("D/r1_penalty" in s, "G/pl_penalty" in s) for s in seen] == [(True, True), (False, False)] * 2 + [
        (True, True)]
    assert len(compiles) >= 2 and recompiles == 0, f"steps 2-4 compiled {recompiles} programs"
    assert np.isfinite(float(m["G/pl_length"])) and float(m["D/r1_penalty"]) > 0
    assert int(host(state.skips)) == 0  # a finite step resets the run of skips


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
def test_grad_accumulation_equals_full_batch():
    train = deterministic(r1_interval=1)
    _, s1, m1, _ = run_steps(tiny_config(**train), jax.devices()[:1], 1)
    _, s4, m4, _ = run_steps(tiny_config(grad_accum=4, **train), jax.devices()[:1], 1)
    for k in m1[0]:
        np.testing.assert_allclose(m4[0][k], m1[0][k], rtol=1e-5, atol=1e-7, err_msg=k)
    for x, y in zip(jax.tree.leaves(host(s1)), jax.tree.leaves(host(s4))):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
