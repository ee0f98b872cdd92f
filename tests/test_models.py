"""Generator / discriminator: reference parameter counts, shapes, attention semantics, gradients, truncation,
validation. Tiny configs (resolution 16-32, <= 16 channels) except where only shapes are traced."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from ganjax.config import base_config
from ganjax.models import LOGICAL_AXES, ModelConfig, build_models
from ganjax.models.summary import abstract_variables, summarize

TINY = dict(resolution=8, channel_base=64, channel_max=8, num_local=3, z_dim=8, w_dim=8, mapping_layers=1,
            mbstd_group=2)
CLEVR = dict(num_local=8, z_dim=16, w_dim=16, global_modulation=False, mapping_attention=False)
KEY = jax.random.key(0)


def rngs(seed=0):
    # 'rbg' keys: the same semantics as threefry, about half the XLA compile time on CPU (tests compile a lot).
    k = jax.random.key(seed, impl="rbg")
    return {"params": k, "noise": jax.random.fold_in(k, 1), "dropout": jax.random.fold_in(k, 2),
            "mixing": jax.random.fold_in(k, 3)}


def tiny(**kw):
    return ModelConfig(**{**TINY, **kw})


def z_for(cfg, batch=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, cfg.num_latents, cfg.z_dim))


@functools.cache
def init_g(cfg, batch=2):
    """(G, D, unboxed G variables, z), cached per config so tests share one compile."""
    G, D = build_models(cfg)
    z = z_for(cfg, batch)
    gv = jax.jit(lambda z: G.init(rngs(), z))(z)
    return G, D, meta.unbox(gv), z


# ---------------------------------------------------------------- exact reference parameter counts
@pytest.mark.parametrize("name,kw,want_g,want_d,want_map,want_pos", [
    ("ffhq256", dict(resolution=256), 30_903_632, 28_864_129, 44_352, 512),
    ("clevr256", dict(resolution=256, **CLEVR), 30_357_936, 28_864_129, 4_896, 128),
    ("cpu-small", dict(resolution=32, channel_base=4096, channel_max=128, **CLEVR), 1_564_970, 1_346_305, 4_896, 128),
    ("cpu-medium", dict(resolution=64, channel_base=16384, channel_max=256, **CLEVR), 7_602_860, 6_625_281, 4_896,
     128),
    ("ffhq-default-64", dict(resolution=64, attention_end_res=64), 30_379_340, 26_488_833, 44_352, 512),
    ("stylegan2-small", dict(resolution=32, channel_base=4096, channel_max=128, num_local=0, z_dim=512, w_dim=512,
                             attention="none", mapping_attention=False, architecture_g="skip",
                             mapping_resnet=False), 4_336_019, 1_346_305, 2_363_904, 0),
])
def test_parameter_counts_equal_the_reference(name, kw, want_g, want_d, want_map, want_pos):
    p = summarize(ModelConfig(**kw))["params"]
    assert (p["G_total"], p["D"], p["G_mapping"], p["G_latent_pos"]) == (want_g, want_d, want_map, want_pos), name
    assert p["G_total"] == p["G_mapping"] + p["G_synthesis"] + p["G_latent_pos"]


def test_reference_layout_of_ffhq256():
    cfg = ModelConfig(resolution=256)
    assert cfg.num_ws == 15 and len(cfg.attention_layers) == 11
    assert [cfg.channels(r) for r in cfg.block_resolutions] == [512] * 5 + [256, 128]
    gv, _ = abstract_variables(cfg)
    t = meta.unbox(gv["params"])["synthesis_network"]["b128"]["conv0"]["transformer"]
    assert t["centroids"].shape == (1, 1, 16, 512) and t["att_weight"].shape == (1, 1, 512)
    assert "transformer" not in meta.unbox(gv["params"])["synthesis_network"]["b256"]["conv0"]


# ---------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("res", [16, 32, 64, 128, 256])
def test_abstract_shapes_at_every_resolution(res):
    cfg = ModelConfig(resolution=res, channel_base=64 * res, channel_max=64, num_local=8, z_dim=16, w_dim=16)
    G, D = build_models(cfg)
    gv, dv = abstract_variables(cfg, batch=3)
    z = jax.ShapeDtypeStruct((3, 9, 16), jnp.float32)
    img, att = jax.eval_shape(lambda v, z: G.apply(v, z, return_attention=True, rngs=rngs()), gv, z)
    assert img.shape == (3, res, res, 3) and img.dtype == jnp.float32
    assert att.shape == (3, 8, len(cfg.attention_layers), 1, res, res)
    logits = jax.eval_shape(lambda v, x: D.apply(v, x), dv, img)
    assert logits.shape == (3,) and logits.dtype == jnp.float32


@pytest.mark.parametrize("batch,num_local,dtype,res", [(1, 0, "float32", 16), (3, 8, "bfloat16", 16),
                                                      (8, 16, "float32", 8)])
def test_generate_and_discriminate_finite(batch, num_local, dtype, res):
    kw = dict(num_local=num_local, compute_dtype=dtype, resolution=res, mbstd_group=4, channel_base=128)
    if num_local == 0:
        kw.update(attention="none", mapping_attention=False, architecture_g="skip")
    cfg = tiny(**kw)
    G, D, gv, z = init_g(cfg, batch)
    img, att = jax.jit(lambda v, z: G.apply(v, z, return_attention=True, train=True, rngs=rngs()))(gv, z)
    assert img.shape == (batch, res, res, 3) and img.dtype == jnp.float32
    assert att.shape == (batch, num_local, len(cfg.attention_layers), 1, res, res)
    assert bool(jnp.all(jnp.isfinite(img))) and float(jnp.std(img)) > 0
    assert bool(jnp.all(att >= 0)) and bool(jnp.all(jnp.isfinite(att)))  # train=True: dropout, sums vary
    dv = jax.jit(D.init)(rngs(), img)
    logits = jax.jit(D.apply)(dv, img)
    assert logits.shape == (batch,) and logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_bfloat16_model_equals_float32_to_bfloat16_rounding():
    """model.compute_dtype=bfloat16 on the float32 model's parameters gives its images and logits to within
    bfloat16's rounding: its unit roundoff u = 2^-8 per operation, accumulated over ~20 layers. Bounds: mean
    |diff| <= 2u of the image range and max <= 32u (measured on this tiny G over 3 seeds: mean 0.15-0.22%, max
    3.1-4.7%, against 0.78% and 12.5%); D logits <= 16u of their largest (measured 0.7-1.4%, bound 6.25%). A
    layer that lost its float32 accumulation or its demodulation would move the mean, not just the tails."""
    u = 2.0 ** -8
    cfg = tiny(num_local=8, resolution=16, mbstd_group=4, channel_base=128)
    G, D, gv, z = init_g(cfg, 4)
    G16, D16 = build_models(dataclasses.replace(cfg, compute_dtype="bfloat16"))
    img = jax.jit(lambda v, z: G.apply(v, z, noise_mode="const"))(gv, z)
    img16 = jax.jit(lambda v, z: G16.apply(v, z, noise_mode="const"))(gv, z)
    assert img16.dtype == jnp.float32
    span, diff = float(img.max() - img.min()), np.abs(np.asarray(img16) - np.asarray(img))
    assert u / 16 * span < diff.mean() <= 2 * u * span  # bf16 is really used, and close
    assert diff.max() <= 32 * u * span
    dv = jax.jit(D.init)(rngs(), img)
    logits, logits16 = jax.jit(D.apply)(dv, img), jax.jit(D16.apply)(dv, img)
    assert float(jnp.abs(logits16 - logits).max()) <= 16 * u * float(jnp.abs(logits).max())


# ---------------------------------------------------------------- attention semantics inside G
def _perturb(params, pred, seed=5):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    keys = iter(jax.random.split(jax.random.key(seed), len(flat)))
    def f(path, x):
        k = next(keys)
        return x + jax.random.normal(k, x.shape) if pred(jax.tree_util.keystr(path)) else x
    return jax.tree_util.tree_map_with_path(f, params)


@pytest.mark.parametrize("kind", ["official", "simplex", "duplex"])
def test_which_latent_projections_matter(kind):
    cfg = tiny(attention=kind, heads=2, mapping_attention=False)
    G, _, gv, z = init_g(cfg)
    run = jax.jit(lambda p, z: G.apply({"params": p, "buffers": gv["buffers"]}, z, noise_mode="const"))
    base = run(gv["params"], z)
    keys = _perturb(gv["params"], lambda s: "transformer" in s and ("to_keys" in s or "to_pos_map" in s))
    values = _perturb(gv["params"], lambda s: "transformer" in s and "to_values" in s)
    # Latent positions reach the image only through the attention (mapping attention is off here).
    pos = _perturb(gv["params"], lambda s: s == "['pos']")
    d_keys = float(jnp.max(jnp.abs(run(keys, z) - base)))
    d_pos = float(jnp.max(jnp.abs(run(pos, z) - base)))
    assert float(jnp.max(jnp.abs(run(values, z) - base))) > 1e-3
    if kind == "official":  # upstream issue #45: keys and latent positions never reach the image
        assert d_keys == 0.0 and d_pos == 0.0
    else:
        assert d_keys > 1e-3 and d_pos > 1e-3


def test_integration_modes_and_duplex_carry():
    outs = {}
    for integ in ("add", "both"):
        cfg = tiny(integration=integ, attention="simplex", mapping_attention=False)
        G, _, gv, z = init_g(cfg)
        outs[integ] = jax.jit(lambda v, z: G.apply(v, z, noise_mode="none"))(gv, z)
        assert bool(jnp.all(jnp.isfinite(outs[integ]))) and float(jnp.std(outs[integ])) > 0
    assert not np.allclose(outs["add"], outs["both"])
    # Duplex: every attention layer but the first sees latents updated by the layers before it.
    cfg = tiny(attention="duplex", heads=2)
    G, _, gv, z = init_g(cfg)
    p = gv["params"]
    zero_first = jax.tree_util.tree_map(lambda x: x, p)
    upd = zero_first["synthesis_network"]["b4"]["conv1"]["transformer"]["ltnt_update"]
    upd["weight"] = jnp.zeros_like(upd["weight"])
    run = jax.jit(lambda p, z: G.apply({"params": p, "buffers": gv["buffers"]}, z, noise_mode="const"))
    a, b = run(p, z), run(zero_first, z)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4


# ---------------------------------------------------------------- gradients
def test_losses_have_finite_gradients_and_r1():
    cfg = tiny(d_attention=True, attention="official", kmeans_iters=2, heads=2)
    G, D, gv, z = init_g(cfg, batch=4)
    reals = jax.random.uniform(KEY, (4, 8, 8, 3), minval=-1, maxval=1)
    dv = meta.unbox(jax.jit(D.init)(rngs(), reals))
    r = rngs(7)

    def g_loss(gp):
        img = G.apply({"params": gp, "buffers": gv["buffers"]}, z, train=True, style_mixing_prob=0.9, rngs=r)
        return jnp.mean(jax.nn.softplus(-D.apply(dv, img, train=True, rngs=r)))

    def d_loss(dp):
        fake = G.apply(gv, z, rngs=r)
        return jnp.mean(jax.nn.softplus(D.apply({"params": dp}, fake, train=True, rngs=r))
                        + jax.nn.softplus(-D.apply({"params": dp}, reals, train=True, rngs=r)))

    def r1(dp):
        grad = jax.grad(lambda x: jnp.sum(D.apply({"params": dp}, x)))(reals)
        return jnp.mean(jnp.sum(jnp.square(grad), axis=(1, 2, 3)))

    grads = {}
    for name, loss, params in (("g", g_loss, gv["params"]), ("d", d_loss, dv["params"]), ("r1", r1, dv["params"])):
        val, grads[name] = jax.jit(jax.value_and_grad(loss))(params)
        leaves = jax.tree_util.tree_leaves(grads[name])
        assert np.isfinite(float(val)) and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
        assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
    g = grads["g"]
    # The mapping's lrmul-0.01 layers and the attention centroids are trained.
    assert float(jnp.abs(g["mapping_network"]["mlp"]["out_layer"]["weight"]).sum()) > 0
    assert float(jnp.abs(g["synthesis_network"]["b8"]["conv0"]["transformer"]["centroids"]).sum()) > 0
    assert float(jnp.abs(grads["d"]["b8"]["transformer"]["to_values"]["weight"]).sum()) > 0  # attention D


# ---------------------------------------------------------------- mapping: truncation, w_avg, style mixing
def test_truncation_w_avg_and_style_mixing():
    cfg = tiny()
    G, _, gv, z = init_g(cfg)
    w_avg = jax.random.normal(jax.random.key(9), (cfg.w_dim,))
    v = {"params": gv["params"], "buffers": {**gv["buffers"],
                                              "mapping_network": {"w_avg": w_avg}}}
    ws = G.apply(v, z, method="mapping")
    assert ws.shape == (2, cfg.num_latents, cfg.num_ws, cfg.w_dim)
    # psi = 1 is the mapping network's own output, broadcast over layers (w_avg plays no part)
    raw = G.apply(v, z, method=lambda g, z: g.mapping_network(z, g.pos))
    np.testing.assert_array_equal(G.apply(v, z, truncation_psi=1.0, method="mapping"),
                                  np.broadcast_to(np.asarray(raw)[:, :, None], ws.shape))
    ws0 = G.apply(v, z, truncation_psi=0.0, method="mapping")
    np.testing.assert_allclose(ws0, jnp.broadcast_to(w_avg, ws0.shape), atol=1e-6)
    img0 = G.apply(v, z, truncation_psi=0.0, noise_mode="const")
    img_avg = G.apply(v, jnp.broadcast_to(w_avg, ws.shape), noise_mode="const", method="synthesis")
    np.testing.assert_allclose(img0, img_avg, atol=1e-5)
    np.testing.assert_allclose(G.apply(v, z, noise_mode="const"), G.apply(v, ws, noise_mode="const",
                                                                            method="synthesis"), atol=1e-5)
    # w_avg update: lerp toward the batch mean with decay 0.995.
    _, upd = G.apply(v, z, update_w_avg=True, method="mapping", mutable=["buffers"])
    x = ws[:, :, 0]
    want = x.mean(axis=(0, 1)) + 0.995 * (w_avg - x.mean(axis=(0, 1)))
    np.testing.assert_allclose(upd["buffers"]["mapping_network"]["w_avg"], want, atol=1e-5)
    # Style mixing with probability 1: a prefix of layers keeps ws, the rest all take the other latents.
    mixed = G.apply(v, z, style_mixing_prob=1.0, method="mapping", rngs={"mixing": jax.random.key(4)})
    same = np.all(np.isclose(mixed, ws), axis=(0, 1, 3))
    cutoff = int(np.argmin(same))
    assert 1 <= cutoff < cfg.num_ws and same[:cutoff].all() and not same[cutoff:].any()


def test_mapping_normalisation_modes():
    """joint: scale-invariant in the global latent and in the locals as a whole; component (TF): invariant
    to scaling one local latent, but the global latent is used unnormalised."""
    z = z_for(tiny(), batch=2)
    scale_global = z.at[:, -1].multiply(3.0)
    scale_local0 = z.at[:, 0].multiply(3.0)
    for norm, global_invariant, local_invariant in (("joint", True, False), ("component", False, True)):
        cfg = tiny(mapping_norm=norm, mapping_attention=False)
        G, _ = build_models(cfg)
        v = jax.jit(lambda z: G.init(rngs(), z, method="mapping"))(z)
        m = jax.jit(lambda z: G.apply(v, z, method="mapping"))
        base = m(z)
        assert np.allclose(m(scale_global), base, atol=1e-5) == global_invariant, norm
        assert np.allclose(m(scale_local0), base, atol=1e-5) == local_invariant, norm


def test_noise_modes_and_conv_forms_agree():
    cfg = tiny()
    G, _, gv, z = init_g(cfg)
    p = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, 0.5) if "noise_strength" in jax.tree_util.keystr(path) else x, gv["params"])
    v = {"params": p, "buffers": gv["buffers"]}
    run = jax.jit(lambda v, z, key, mode: G.apply(v, z, noise_mode=mode, rngs={"noise": key}),
                  static_argnames="mode")
    const = run(v, z, KEY, "const")
    np.testing.assert_array_equal(const, run(v, z, jax.random.key(5), "const"))
    r1, r2 = run(v, z, jax.random.key(1), "random"), run(v, z, jax.random.key(2), "random")
    none = run(v, z, KEY, "none")
    assert not np.allclose(r1, r2) and not np.allclose(const, none) and not np.allclose(r1, none)
    # The other implementations of the same function: per-sample modconv, XLA conv, rematerialised blocks.
    for other in (dataclasses.replace(cfg, fused_modconv=False), dataclasses.replace(cfg, conv_impl="xla"),
                  dataclasses.replace(cfg, remat=True)):
        G2, _ = build_models(other)
        np.testing.assert_allclose(jax.jit(lambda v, z: G2.apply(v, z, noise_mode="const"))(v, z), const, atol=1e-5)


def test_params_carry_logical_axes():
    cfg = tiny(d_attention=True, attention="duplex")
    gv, dv = abstract_variables(cfg)
    allowed = set(LOGICAL_AXES) | {None}
    for tree in (gv["params"], dv["params"]):
        boxes = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: hasattr(x, "names"))
        assert boxes and all(hasattr(b, "names") for b in boxes)
        for b in boxes:
            assert len(b.names) == len(b.value.shape) and set(b.names) <= allowed
    names = gv["params"]["synthesis_network"]["b8"]["conv0"]["weight"].names
    assert names == (None, None, "conv_in", "conv_out")


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kw,field", [
    (dict(resolution=48), "model.resolution"),
    (dict(heads=3), "model.heads"),
    (dict(attention_start_res=64), "model.attention_start_res"),
    (dict(attention_start_res=6), "model.attention_start_res"),
    (dict(attention_end_res=4, attention_start_res=8), "model.attention_end_res"),
    (dict(num_local=-1), "model.num_local"),
    (dict(num_local=0), "model.attention"),
    (dict(kmeans_iters=0), "model.kmeans_iters"),
    (dict(integration="film"), "model.integration"),
    (dict(attention="kmeans"), "model.attention"),
    (dict(z_dim=12), "model.z_dim"),
    (dict(attention_dropout=1.0), "model.attention_dropout"),
    (dict(compute_dtype="float16"), "model.compute_dtype"),
])
def test_invalid_settings_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build_models(tiny(**kw))


def test_from_config_accepts_the_base_config_and_rejects_unknown_fields():
    cfg = ModelConfig.from_config(base_config().model).validate()
    assert cfg.num_latents == 17 and cfg.num_ws == 9
    with pytest.raises(ValueError, match="model.depth"):
        ModelConfig.from_config({"depth": 3})
