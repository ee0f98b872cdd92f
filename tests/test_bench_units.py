"""ganjax.bench units: FLOP walk vs XLA, the reference parameter counts, HLO communication, scaling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ganjax.bench import hlo_comm, scaling
from ganjax.models import flops
from ganjax.train import cost
from ganjax.train.cost import CostMeter
from ganjax.train.recipe import recipe
from ganjax.train.step import StepConfig
from ganjax.config import base_config


def _conv(x, w, stride):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_conv_dense_stack_flops_equal_xla():
    b, h, c0, c1, c2, out = 4, 12, 8, 16, 24, 10
    shapes = [(b, h, h, c0), (3, 3, c0, c1), (3, 3, c1, c2), (1, 1, c2, c2), (c2 * (h // 2) ** 2, out), (out, out)]

    def f(x, w1, w2, w3, d1, d2):
        y = _conv(_conv(_conv(x, w1, 1), w2, 2), w3, 1)
        return (y.reshape(b, -1) @ d1) @ d2

    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    xla = jax.jit(f).lower(*args).compile().cost_analysis()["flops"]
    analytic = b * (flops.conv2d_flops(h, h, c0, c1, 3, exact_padding=True)
                    + flops.conv2d_flops(h, h, c1, c2, 3, stride=2, exact_padding=True)
                    + flops.conv2d_flops(h // 2, h // 2, c2, c2, 1, exact_padding=True)
                    + flops.dense_flops(1, c2 * (h // 2) ** 2, out) + flops.dense_flops(1, out, out))
    assert xla == analytic


def test_padding_free_count_is_the_full_kernel():
    assert flops.conv2d_flops(8, 8, 3, 5, 3) == 2 * 64 * 9 * 15
    assert flops.conv2d_flops(8, 8, 3, 5, 3, exact_padding=True) == 2 * 22 * 22 * 15  # 8*3-2 taps per axis


def _workload(**kw):
    m = base_config().model
    m.update(kw)
    return m


CLEVR = dict(z_dim=16, w_dim=16, num_local=8, global_modulation=False, mapping_attention=False)
SG2 = dict(z_dim=512, w_dim=512, num_local=0, architecture_g="skip", attention="none", mapping_attention=False)


@pytest.mark.parametrize("kw, g, d", [
    (dict(resolution=32, channel_base=4096, channel_max=128, **CLEVR), 1_564_970, 1_346_305),
    (dict(resolution=64, channel_base=16384, channel_max=256, **CLEVR), 7_602_860, 6_625_281),
    (dict(resolution=64), 30_379_340, 26_488_833),
    (dict(resolution=32, channel_base=4096, channel_max=128, **SG2), 4_336_019, 1_346_305),
    (dict(resolution=256), 30_903_632, 28_864_129),
    (dict(resolution=256, **CLEVR), 30_357_936, None),
])
def test_layer_walk_reproduces_reference_parameter_counts(kw, g, d):
    mf = flops.model_flops(_workload(**kw))
    assert mf.g_params == g
    if d is not None:
        assert mf.d_params == d


def test_phase_flops_follow_the_backward_rule():
    m = _workload(resolution=32, channel_base=4096, channel_max=128, **CLEVR)
    t = base_config().train
    t.style_mixing_prob = 0.0
    f = flops.model_flops(m)
    per = cost.phase_flops_per_image(m, t)
    assert per["g_main"] == pytest.approx(3 * f.g + 2 * f.d)
    assert per["d_main"] == pytest.approx(f.g + 6 * f.d)
    assert per["d_r1"] == pytest.approx(6 * f.d)
    it = cost.iteration_flops(m, t, 8)
    assert it["iteration"] == pytest.approx(8 * (per["g_main"] + per["d_main"] + per["d_r1"] / 16))
    assert cost.train_flops_per_image(m, t) == pytest.approx(per["g_main"] + per["d_main"] + per["d_r1"] / 16)


def _mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def _mlp_train_step(mesh, param_spec):
    """Adam on a 3-layer MLP, batch split over every mesh axis, params laid out by `param_spec`."""
    sizes = [(64, 128), (128, 256), (256, 32)]
    params = [jnp.ones(s, jnp.float32) for s in sizes]
    opt = optax.adam(1e-3)
    state = (params, opt.init(params))

    def loss(ps, x):
        for w in ps:
            x = jnp.tanh(x @ w)
        return jnp.mean(x**2)

    def step(st, x):
        ps, os = st
        g = jax.grad(loss)(ps, x)
        up, os = opt.update(g, os, ps)
        return (optax.apply_updates(ps, up), os)

    pshard = jax.tree.map(lambda p: NamedSharding(mesh, param_spec if p.ndim == 2 else P()), state)
    xshard = NamedSharding(mesh, P(mesh.axis_names))
    fn = jax.jit(step, in_shardings=(pshard, xshard), out_shardings=pshard, donate_argnums=0)
    state = jax.device_put(state, pshard)
    x = jax.device_put(jnp.ones((64, 64)), xshard)
    return fn.lower(state, x).compile(), state, sum(int(np.prod(s)) * 4 for s in sizes)


def test_dp_communication_is_a_ring_all_reduce_of_the_gradients():
    compiled, _, grad_bytes = _mlp_train_step(_mesh((8,), ("data",)), P())
    s = hlo_comm.summarize(hlo_comm.parse(compiled.as_text()))
    # Ring all-reduce: each device sends 2 (n-1)/n of the gradient bytes; the only other traffic allowed is
    # the scalar loss-side reductions (< 1% of the gradients).
    assert set(s["by_kind"]) == {"all-reduce"}
    assert s["total_ring_bytes"] == pytest.approx(2 * 7 / 8 * grad_bytes, rel=0.01)
    assert s["by_kind"]["all-reduce"]["result_bytes"] >= grad_bytes


def test_fsdp_holds_an_eighth_of_params_and_optimizer_state():
    def per_device(state):
        return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(state))

    c_dp, s_dp, _ = _mlp_train_step(_mesh((8,), ("data",)), P())
    c_fs, s_fs, _ = _mlp_train_step(_mesh((8,), ("fsdp",)), P("fsdp"))
    assert per_device(s_fs) == pytest.approx(per_device(s_dp) / 8, rel=0.01)
    assert c_fs.memory_analysis().argument_size_in_bytes < c_dp.memory_analysis().argument_size_in_bytes / 4
    # every weight matrix is all-gathered in full before use (XLA may gather some twice or move
    # activations instead, so only the lower bound is fixed)
    gathered = {c.shape.split("{")[0] for c in hlo_comm.parse(c_fs.as_text()) if c.kind == "all-gather"}
    assert {"f32[64,128]", "f32[128,256]", "f32[256,32]"} <= gathered


HLO = """HloModule m, num_partitions=8
%body.1 (p: f32[4]) -> f32[4] {
  %ar.2 = f32[4]{0} all-reduce(%p), replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add
}
ENTRY %main (a: f32[16,4], b: bf16[8]) -> f32[16,4] {
  %all-gather = f32[16,4]{1,0} all-gather(%a), replica_groups=[2,4]<=[8], dimensions={0}
  %ar = bf16[8]{0} all-reduce(%b), replica_groups={}, to_apply=%add
  %cp = f32[16,4]{1,0} collective-permute(%all-gather), source_target_pairs={{0,1},{1,0}}
  %a2a = f32[16,4]{1,0} all-to-all(%cp), replica_groups=mesh['x'=2,'y'=4] {'x','y'}, dimensions={0}
  %w = f32[4] while(%x), condition=%cond, body=%body.1
}
"""


def test_hlo_parser_reads_every_replica_group_spelling():
    cs = {c.name: c for c in hlo_comm.parse(HLO)}
    assert cs["all-gather"].group_size == 4 and cs["all-gather"].ring_bytes == 3 / 4 * 256
    assert cs["ar"].group_size == 8 and cs["ar"].ring_bytes == 2 * 7 / 8 * 16
    assert cs["cp"].ring_bytes == 256
    assert cs["a2a"].group_size == 8 and cs["a2a"].ring_bytes == 7 / 8 * 256
    assert cs["ar.2"].group_size == 2 and cs["ar.2"].in_loop


def test_scaling_dp_efficiency_falls_with_devices_and_matches_the_formula():
    ops = [scaling.CommOp("all-reduce", 100e6, 1.0)]
    rows = scaling.estimate(ops, compute_s=0.1, device_key="h100", counts=(8, 64))
    # inside one NVLink node: 2 (7/8) N / 450 GB/s + latency 6 steps x 5 us
    t8 = 2 * 7 / 8 * 100e6 / 450e9 + 5e-6 * 2 * 3
    assert rows[0]["comm_s"] == pytest.approx(t8)
    # 8 nodes: plus 2 (7/8) (N/8) / 50 GB/s across InfiniBand
    t64 = 2 * (7 / 8 * 100e6 / 450e9 + 7 / 8 * 100e6 / 8 / 50e9) + 5e-6 * 2 * 6
    assert rows[1]["comm_s"] == pytest.approx(t64)
    assert rows[1]["efficiency_no_overlap"] == pytest.approx(0.1 / (0.1 + t64))
    assert rows[1]["efficiency_overlap"] == 1.0


def test_analytic_comm_ops_count_each_phase():
    t = base_config().train  # R1 every 16, path length off
    dp = scaling.analytic_ops("dp", 10, 20, recipe(t))
    assert [(o.kind, o.buffer_bytes, o.weight) for o in dp] == [
        ("all-reduce", 40.0, 1.0), ("all-reduce", 80.0, 1.0), ("all-reduce", 80.0, 1 / 16)]
    t.r1_gamma = 0.0
    fs = scaling.analytic_ops("fsdp", 10, 20, recipe(t))
    assert sum(o.buffer_bytes for o in fs if o.kind == "all-gather") == 2 * (40 + 80)
    assert math.isclose(sum(o.buffer_bytes for o in fs if o.kind == "reduce-scatter"), 120)


def test_cost_meter_accumulates_flops_device_time_and_money():
    m = _workload(resolution=32, channel_base=4096, channel_max=128, **CLEVR)
    t = base_config().train
    t.batch_size, t.price_per_device_hour = 8, 2.0
    meter = CostMeter(m, t, num_devices=4, device_seconds=100.0)
    out = meter.update(step=10, seconds=9.0)
    assert out["compute/pflops"] == pytest.approx(80 * cost.train_flops_per_image(m, t) / 1e15)
    assert out["compute/device_seconds"] == 136.0
    assert out["compute/cost"] == pytest.approx(136.0 / 3600 * 2.0)
    t.price_per_device_hour = 0.0
    assert "compute/cost" not in CostMeter(m, t, 1).update(1, 1.0)


def test_variant_weights_follow_the_lazy_intervals():
    c = base_config()
    c.train.pl_weight = 2.0  # R1 every 16, path length every 4
    w = StepConfig.from_config(c).variant_weights()
    assert w == {(): 12 / 16, ("g_pl",): 3 / 16, ("g_pl", "d_r1"): 1 / 16}
    c.train.pl_weight, c.train.r1_gamma = 0.0, 0.0
    assert StepConfig.from_config(c).variant_weights() == {(): 1.0}


def test_mesh_flag_parsing():
    from ganjax.bench.sweep import apply_mesh, parse_mesh

    assert parse_mesh("dp=4,fsdp=2") == {"data": 4, "fsdp": 2, "model": 1}
    c = apply_mesh(base_config(), parse_mesh("fsdp=8"))
    assert (c.parallel.mesh_data, c.parallel.mesh_fsdp, c.parallel.strategy) == (1, 8, "fsdp")
    with pytest.raises(ValueError, match="--mesh: 'pp=2'"):
        parse_mesh("pp=2")


def test_an_unknown_attention_kind_is_an_error_in_the_flop_count():
    m = base_config().model
    m.attention = "linear"
    with pytest.raises(ValueError, match="model.attention: the FLOP counter has no layer walk for attention 'linear'"):
        flops.model_flops(m)
