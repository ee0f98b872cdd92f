"""Building blocks against straightforward NumPy references (explicit padding and loops)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from jax import lax

from ganjax.nn import (BipartiteAttention, Dense, bias_act, conv2d, conv2d_resample, conv2d_transpose,
                       downsample2d, minibatch_std, modulated_conv2d, sinusoidal_grid, upfirdn2d, upsample2d)
from ganjax.nn import backend
from ganjax.nn.conv import default_impl

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- NumPy references
def np_conv2d(x, w, stride=1, pad=0):
    """Correlation, x [B,H,W,C], w [kh,kw,C,O] or [B,kh,kw,C,O]; loops over kernel taps."""
    x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[-4:-2]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = 0
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            if w.ndim == 4:
                out = out + np.einsum("bhwc,co->bhwo", patch, w[i, j])
            else:
                out = out + np.einsum("bhwc,bco->bhwo", patch, w[:, i, j])
    return out


def np_conv_transpose(x, w, s=2):
    """torch conv_transpose2d by explicit scatter: out[s*i+p, s*j+q] += x[i, j] @ w[p, q]."""
    b, h, wd, _ = x.shape
    kh, kw, _, o = w.shape[-4:]
    out = np.zeros((b, s * (h - 1) + kh, s * (wd - 1) + kw, o))
    for p in range(kh):
        for q in range(kw):
            tap = np.einsum("bhwc,co->bhwo", x, w[p, q]) if w.ndim == 4 else np.einsum("bhwc,bco->bhwo", x, w[:, p, q])
            out[:, p:p + s * (h - 1) + 1:s, q:q + s * (wd - 1) + 1:s] += tap
    return out


def np_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """Zero insertion, explicit pad/crop, 2-D true convolution with outer(f, f), then subsample."""
    f = np.asarray(f, np.float64)
    f2 = np.outer(f, f)
    f2 = f2 / f2.sum() * gain
    b, h, w, c = x.shape
    u = np.zeros((b, h * up, w * up, c))
    u[:, ::up, ::up] = x
    px0, px1, py0, py1 = pad
    u = np.pad(u, ((0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0)), (0, 0)))
    u = u[:, max(-py0, 0):u.shape[1] - max(-py1, 0), max(-px0, 0):u.shape[2] - max(-px1, 0)]
    ff = f2[::-1, ::-1]
    n = ff.shape[0]
    ho, wo = u.shape[1] - n + 1, u.shape[2] - n + 1
    out = np.zeros((b, ho, wo, c))
    for i in range(n):
        for j in range(n):
            out += u[:, i:i + ho, j:j + wo] * ff[i, j]
    return out[:, ::down, ::down]


F = [1, 3, 3, 1]


def np_up_conv3(x, w):
    """StyleGAN2 up x2 3x3 conv: transposed conv, then FIR with padding 1 and gain 4."""
    return np_upfirdn2d(np_conv_transpose(x, w), F, pad=(1, 1, 1, 1), gain=4)


def np_down_conv3(x, w):
    return np_conv2d(np_upfirdn2d(x, F, pad=(2, 2, 2, 2)), w, stride=2)


# ---------------------------------------------------------------- conv primitive
@pytest.mark.parametrize("impl", ["matmul", "xla"])
@pytest.mark.parametrize("stride,pad,k", [(1, 1, 3), (1, 0, 1), (2, 0, 3), (1, 0, 3)])
def test_conv2d_matches_numpy(impl, stride, pad, k):
    x, w = randn(2, 9, 9, 5), randn(k, k, 5, 4)
    got = conv2d(jnp.asarray(x), jnp.asarray(w), stride=stride, padding=pad, impl=impl)
    np.testing.assert_allclose(got, np_conv2d(x, w, stride, pad), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["matmul", "xla"])
def test_conv2d_per_sample_and_transpose(impl):
    x, ws = randn(3, 6, 7, 4), randn(3, 3, 3, 4, 5)
    np.testing.assert_allclose(conv2d(x, ws, padding=1, impl=impl), np_conv2d(x, ws, 1, 1), atol=1e-5, rtol=1e-5)
    w = randn(3, 3, 4, 5)
    np.testing.assert_allclose(conv2d_transpose(x, w, impl=impl), np_conv_transpose(x, w), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(conv2d_transpose(x, ws, impl=impl), np_conv_transpose(x, ws), atol=1e-5, rtol=1e-5)
    w1 = randn(1, 1, 4, 2)  # kernel smaller than the stride: empty phases
    np.testing.assert_allclose(conv2d_transpose(x, w1, impl=impl), np_conv_transpose(x, w1), atol=1e-5, rtol=1e-5)


def test_conv_impls_agree_with_gradients():
    x, w = jnp.asarray(randn(2, 8, 8, 6)), jnp.asarray(randn(3, 3, 6, 7))

    def loss(impl, fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, impl=impl)))

    for fn in (lambda x, w, impl: conv2d(x, w, padding=1, impl=impl),
               lambda x, w, impl: conv2d(x, w, stride=2, impl=impl),
               lambda x, w, impl: conv2d_transpose(x, w, impl=impl)):
        ga = jax.grad(loss("matmul", fn), argnums=(0, 1))(x, w)
        gb = jax.grad(loss("xla", fn), argnums=(0, 1))(x, w)
        for a, b in zip(ga, gb):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(fn(x, w, "matmul"), fn(x, w, "xla"), atol=1e-5, rtol=1e-5)
    # The tests run on CPU: XLA's conv for stride-1 shared kernels, matmul forms for the rest.
    assert [default_impl(op) for op in ("conv", "strided", "grouped", "transpose")] == ["xla", "matmul", "matmul",
                                                                                        "matmul"]


def test_mixed_precision_conv_vjp_is_exact_in_float32():
    """The stride-1 conv with its own VJP (dx as a correlation with the flipped kernel) is the same function as
    XLA's conv, through the gradient and the gradient of the gradient (R1), for any padding."""
    from ganjax.nn.conv import _mixed_conv
    x, w = jnp.asarray(randn(2, 7, 6, 3)), jnp.asarray(randn(3, 3, 3, 5))
    for pads in (((1, 1), (1, 1)), ((0, 0), (0, 0)), ((2, 0), (1, 2)), ((-1, 1), (0, 1))):
        def xla(x, w):
            return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        ours = lambda x, w: _mixed_conv(x, w, pads)  # noqa: E731
        np.testing.assert_allclose(ours(x, w), xla(x, w), atol=1e-5)
        for a, b in zip(jax.grad(lambda x, w: jnp.sum(jnp.sin(ours(x, w))), (0, 1))(x, w),
                        jax.grad(lambda x, w: jnp.sum(jnp.sin(xla(x, w))), (0, 1))(x, w)):
            np.testing.assert_allclose(a, b, atol=1e-4)

        def r1(f):
            return lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.sin(f(x, w))))(x) ** 2)
        np.testing.assert_allclose(jax.grad(r1(ours))(w), jax.grad(r1(xla))(w), atol=1e-3, rtol=1e-4)


def test_mixed_precision_float32_result_is_the_unrounded_sum():
    """float32_result=True (attention logits): the float32 sum of the bf16 products, not rounded to bf16; its
    gradients take the bf16 path as plain precision.einsum's do; float32 operands are plain jnp.einsum."""
    from ganjax.nn import precision
    a, b = jnp.asarray(randn(4, 64, 32)), jnp.asarray(randn(32, 16))
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    y = precision.einsum("bik,ko->bio", a16, b, float32_result=True)
    assert y.dtype == jnp.float32
    # bf16 x bf16 products are exact in float32 (8 + 8 significant bits), so only the order of the 32-term sum
    # rounds: at most 32 float32 ulps of the sum of |products|.
    a32, b32 = a16.astype(jnp.float32), b16.astype(jnp.float32)
    bound = 32 * 2.0 ** -24 * np.asarray(jnp.einsum("bik,ko->bio", jnp.abs(a32), jnp.abs(b32)))
    assert np.all(np.abs(np.asarray(y) - np.asarray(jnp.einsum("bik,ko->bio", a32, b32))) <= bound)
    rounded = precision.einsum("bik,ko->bio", a16, b).astype(jnp.float32)
    assert float(jnp.abs(y - rounded).max()) > 0  # it really is not the bf16-rounded result
    loss = lambda f32: lambda a, b: jnp.sum(jnp.sin(precision.einsum("bik,ko->bio", a, b, float32_result=f32)  # noqa: E731
                                                   .astype(jnp.float32)))
    g32, g16 = jax.grad(loss(True), (0, 1))(a16, b16), jax.grad(loss(False), (0, 1))(a16, b16)
    ref = jax.grad(lambda a, b: jnp.sum(jnp.sin(jnp.einsum("bik,ko->bio", a, b))), (0, 1))(a32, b32)
    for g, h, r in zip(g32, g16, ref):
        assert g.dtype == jnp.bfloat16
        # the same bf16 path as the rounded einsum's gradient: both within bf16 rounding of the float32 one
        scale = float(jnp.abs(r).max())
        assert float(jnp.abs(g.astype(jnp.float32) - r).max()) < 2e-2 * scale
        assert float(jnp.abs(h.astype(jnp.float32) - r).max()) < 2e-2 * scale
    np.testing.assert_array_equal(precision.einsum("bik,ko->bio", a, b, float32_result=True),
                                  jnp.einsum("bik,ko->bio", a, b))


def test_mixed_precision_contractions_accumulate_in_float32():
    """bfloat16 einsums/convs: bf16 results, float32 sums (one rounding), gradients through the same path."""
    from ganjax.nn import precision
    from ganjax.nn.conv import concat_windows
    a, b = jnp.asarray(randn(4, 64, 32)), jnp.asarray(randn(32, 16))
    y = precision.einsum("bik,ko->bio", a.astype(jnp.bfloat16), b)
    assert y.dtype == jnp.bfloat16
    # One rounding of the float32 sum of the bf16 products: exact to bf16's half-ulp.
    exact = jnp.einsum("bik,ko->bio", a.astype(jnp.bfloat16).astype(jnp.float32), b.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(y.astype(jnp.float32), exact, rtol=2 ** -8, atol=1e-6)
    ga, gb = jax.grad(lambda a, b: jnp.sum(precision.einsum("bik,ko->bio", a, b).astype(jnp.float32) ** 2), (0, 1))(
        a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
    ra, rb = jax.grad(lambda a, b: jnp.sum(jnp.einsum("bik,ko->bio", a, b) ** 2), (0, 1))(a, b)
    assert ga.dtype == gb.dtype == jnp.bfloat16
    for g, r in ((ga, ra), (gb, rb)):
        assert float(jnp.abs(g.astype(jnp.float32) - r).max() / jnp.abs(r).max()) < 2e-2
    # Layouts XLA:CPU's plain einsum failed on at run time (bf16 x bf16 -> f32 outside its YNNPACK fusion).
    rng = np.random.default_rng(2)
    for spec, sa, sb in (("azcd,zb->abcd", (64, 8, 16, 1), (8, 16)), ("abzd,zc->abcd", (8, 2, 4, 16), (4, 128)),
                         ("mo,mk->ok", (9, 16), (9, 128)), ("ik,io->ko", (16, 33), (16, 64))):
        x, y = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in (sa, sb))
        ref = jnp.einsum(spec, x.astype(jnp.float32), y.astype(jnp.float32))
        np.testing.assert_allclose(precision.einsum(spec, x, y).astype(jnp.float32), ref, rtol=1e-2, atol=1e-2)
        jax.block_until_ready(jax.grad(lambda x, y: jnp.sum(precision.einsum(spec, x, y).astype(jnp.float32)),
                                       (0, 1))(x, y))
    with pytest.raises(ValueError, match="sums over an index"):
        precision.einsum("bik,ko->bo", a.astype(jnp.bfloat16), b)
    # The windows' gradient is summed in float32: small integers make bf16 and float32 sums exact and equal.
    xi = jnp.asarray(np.random.default_rng(1).integers(-4, 5, (2, 6, 6, 3)), jnp.float32)
    starts = ((0, 0), (0, 1), (1, 0), (1, 1), (2, 2))
    weights = (jnp.arange(4.0 * 4 * 15) % 7).reshape(1, 4, 4, 15)  # cotangents 0..6, sums of five below 256
    f = lambda x: jnp.sum(concat_windows(x, starts, (4, 4)).astype(jnp.float32) * weights)  # noqa: E731
    np.testing.assert_array_equal(jax.grad(f)(xi.astype(jnp.bfloat16)).astype(jnp.float32), jax.grad(f)(xi))
    # bf16 convolutions on CPU all take the matmul form (the bf16 dot-product instructions).
    assert [default_impl(op, "bfloat16") for op in ("conv", "strided", "grouped", "transpose")] == ["matmul"] * 4
    x, w = jnp.asarray(randn(2, 8, 8, 6)), jnp.asarray(randn(3, 3, 6, 7))
    for fn in (lambda x: conv2d(x, w, padding=1), lambda x: conv2d(x, w, stride=2, padding=1),
               lambda x: conv2d_transpose(x, w)):
        y16, y32 = fn(x.astype(jnp.bfloat16)), fn(x)
        assert y16.dtype == jnp.bfloat16
        assert float(jnp.abs(y16.astype(jnp.float32) - y32).max() / jnp.abs(y32).max()) < 1e-2


def test_conv_impl_rejects_unknown():
    with pytest.raises(ValueError, match="conv impl"):
        conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 1, 1, 1)), impl="cudnn")


# ---------------------------------------------------------------- FIR resampling
@pytest.mark.parametrize("up,down,pad,gain", [(1, 1, (1, 2, 2, 1), 1.0), (2, 1, (2, 1, 2, 1), 4.0),
                                              (1, 2, (1, 1, 1, 1), 1.0), (1, 1, (-1, 2, 0, -1), 2.0),
                                              (2, 1, (1, 1, 1, 1), 4.0), (1, 2, (-1, 0, 2, -1), 1.0)])
@pytest.mark.parametrize("target", ["cpu", "tpu"])  # tpu: the depthwise-convolution form, run here on the CPU
def test_upfirdn2d_matches_numpy(up, down, pad, gain, target):
    x = randn(2, 7, 6, 3)
    with backend.tracing_for(target):
        got = upfirdn2d(jnp.asarray(x), F, up=up, down=down, padding=pad, gain=gain)
    np.testing.assert_allclose(got, np_upfirdn2d(x, F, up, down, pad, gain), atol=1e-5, rtol=1e-5)


def test_upfirdn2d_long_axes_use_taps_and_agree():
    from ganjax.nn import resample
    x = randn(1, resample.MATRIX_MAX_LEN + 6, 5, 2)  # H: shifted taps; W: the resampling matrix
    for up, down, pad, gain in ((2, 1, (2, 1, 2, 1), 4.0), (1, 2, (1, 1, 1, 1), 1.0), (1, 1, (1, 1, 1, 1), 4.0)):
        got = upfirdn2d(jnp.asarray(x), F, up=up, down=down, padding=pad, gain=gain)
        np.testing.assert_allclose(got, np_upfirdn2d(x, F, up, down, pad, gain), atol=1e-5, rtol=1e-5)


def test_up_down_sample_shapes_and_dc_gain():
    x = jnp.ones((1, 8, 8, 2))
    up, down = upsample2d(x), downsample2d(x)
    assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
    # A constant image keeps its value away from the borders (filter normalised, gain = up^2).
    np.testing.assert_allclose(up[0, 3:-3, 3:-3], 1.0, atol=1e-6)
    np.testing.assert_allclose(down[0, 1:-1, 1:-1], 1.0, atol=1e-6)


@pytest.mark.parametrize("impl", ["matmul", "xla"])
def test_conv2d_resample_matches_numpy(impl):
    x = randn(2, 6, 6, 4)
    w3, w1 = randn(3, 3, 4, 5), randn(1, 1, 4, 5)
    r = lambda **kw: np.asarray(conv2d_resample(jnp.asarray(x), **kw, impl=impl))  # noqa: E731
    np.testing.assert_allclose(r(w=w3, up=2, padding=1), np_up_conv3(x, w3), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(r(w=w3, down=2, padding=1), np_down_conv3(x, w3), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(r(w=w1, up=2), np_upfirdn2d(np_conv2d(x, w1), F, 2, 1, (2, 1, 2, 1), 4),
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(r(w=w1, down=2), np_conv2d(np_upfirdn2d(x, F, 1, 2, (1, 1, 1, 1)), w1),
                               atol=1e-5, rtol=1e-5)
    assert r(w=w3, up=2, padding=1).shape == (2, 12, 12, 5) and r(w=w3, down=2, padding=1).shape == (2, 3, 3, 5)


# ---------------------------------------------------------------- modulated conv
def np_modconv(x, w, s, demod=True, up=1):
    ws = w[None].astype(np.float64) * s[:, None, None, :, None]
    if demod:
        ws = ws / np.sqrt((ws ** 2).sum(axis=(1, 2, 3), keepdims=True) + 1e-8)
    outs = []
    for b in range(x.shape[0]):
        xb = x[b:b + 1]
        outs.append(np_up_conv3(xb, ws[b]) if up == 2 else np_conv2d(xb, ws[b], 1, w.shape[0] // 2))
    return np.concatenate(outs)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demod", [True, False])
def test_modulated_conv_forms_match_numpy(up, demod):
    x, w, s = randn(3, 5, 5, 4), randn(3, 3, 4, 6) / 6, randn(3, 4) + 1
    ref = np_modconv(x, w, s, demod, up)
    for fused in (True, False):
        for impl in ("matmul", "xla"):
            got = modulated_conv2d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(s), demodulate=demod, up=up,
                                   padding=1, fused=fused, impl=impl)
            np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- small layers
def test_bias_act_and_equalized_dense():
    x = jnp.asarray([[-1.0, 2.0]])
    np.testing.assert_allclose(bias_act(x, jnp.asarray([0.5, 0.0]), "lrelu"),
                               [[-0.1 * np.sqrt(2), 2 * np.sqrt(2)]], rtol=1e-6)
    np.testing.assert_allclose(bias_act(x, None, "linear", 3.0), [[-3.0, 6.0]])
    layer = Dense(64, lrmul=0.01, bias_init=1.0)
    v = layer.init(jax.random.key(0), jnp.zeros((1, 256)))
    w = meta.unbox(v["params"])["weight"]
    assert abs(float(jnp.std(w)) - 100.0) < 3.0  # stored randn / lrmul
    xin = jnp.asarray(randn(2, 256))
    ref = xin @ (w * 0.01 / 16.0) + 1.0 * 0.01  # used w * lrmul / sqrt(fan_in), bias * lrmul
    np.testing.assert_allclose(layer.apply(v, xin), ref, atol=1e-5, rtol=1e-5)
    assert isinstance(v["params"]["weight"], nn.LogicallyPartitioned)
    assert v["params"]["weight"].names == ("embed", "mlp")


def test_params_of_the_wrong_shape_are_rejected_by_name():
    """Applying a layer to params of another shape (a config changed under a checkpoint) names the param."""
    v = Dense(64).init(jax.random.key(0), jnp.zeros((1, 256)))
    with pytest.raises(ValueError, match=r"weight: the params hold shape \(256, 64\), the layer needs \(128, 64\)"):
        Dense(64).apply(v, jnp.zeros((1, 128)))
    boxed = Dense(64).apply(v, jnp.zeros((2, 256)))  # boxed (LogicallyPartitioned) params apply as the unboxed
    np.testing.assert_array_equal(boxed, Dense(64).apply(meta.unbox(v), jnp.zeros((2, 256))))


def test_minibatch_std_matches_numpy():
    x = randn(8, 4, 4, 6)
    got = np.asarray(minibatch_std(jnp.asarray(x), 4, 2))
    g, n = 4, 2
    y = x.reshape(g, n, 4, 4, 2, 3)
    std = np.sqrt(((y - y.mean(0)) ** 2).mean(0) + 1e-8).mean(axis=(1, 2, 4))  # [n, F]
    for i in range(8):
        np.testing.assert_allclose(got[i, :, :, 6:], np.broadcast_to(std[i % n], (4, 4, 2)), rtol=1e-5)
    np.testing.assert_allclose(got[..., :6], x)
    with pytest.raises(ValueError, match="mbstd_group"):
        minibatch_std(jnp.zeros((6, 4, 4, 2)), 4, 1)


def _std_by_group(x, ids):
    """numpy minibatch-std channel [N] of x [N, H, W, C] for the group ids (one channel: F = 1)."""
    out = np.empty(len(x))
    for g in np.unique(ids):
        m = x[ids == g].astype(np.float64)
        out[ids == g] = np.sqrt(((m - m.mean(0)) ** 2).mean(0) + 1e-8).mean()
    return out


def _same_partition(a, b):
    return all(len(set(b[a == g])) == 1 for g in np.unique(a)) and len(np.unique(a)) == len(np.unique(b))


def test_minibatch_std_groups_per_strategy():
    """Which samples share a minibatch-std group under each strategy, run through the code each uses: a global
    program on a batch sharded over 8 devices (dp/fsdp), a per-device jax.shard_map program (shard_map), the
    training step's micro-batching (train.grad_accum), and both; each equals the documented rule
    (ganjax.nn.mbstd.groups). Strided micro-batches group the same samples as the whole batch; shard_map's
    contiguous shards group others, so its D statistics differ from one device's by exactly that regrouping."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from ganjax.nn.mbstd import groups
    from ganjax.train.step import _micro_batches

    devices, batch, accum = 8, 64, 2
    x = randn(batch, 2, 2, 3)
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    mbstd = lambda v: minibatch_std(v, 4, 1)[:, 0, 0, -1]  # noqa: E731

    def accumulated(v):  # micro-batch j = rows j, j + a, ...; each grouped on its own; back in row order
        micro = jax.vmap(mbstd)(_micro_batches(v, accum))  # [a, B/a]
        return jnp.moveaxis(micro, 0, 1).reshape(-1)

    sharded = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))
    per_device = jax.shard_map(mbstd, mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    per_device_accum = jax.shard_map(accumulated, mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    cases = {"global": (jax.jit(mbstd)(sharded), groups(batch, 4)),
             "grad_accum": (jax.jit(accumulated)(sharded), groups(batch, 4, accum=accum)),
             "shard_map": (jax.jit(per_device)(sharded), groups(batch, 4, shards=devices)),
             "shard_map + grad_accum": (jax.jit(per_device_accum)(sharded),
                                        groups(batch, 4, shards=devices, accum=accum))}
    for name, (got, ids) in cases.items():
        np.testing.assert_allclose(np.asarray(got), _std_by_group(x, ids), rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(mbstd(jnp.asarray(x))), np.asarray(cases["global"][0]), rtol=1e-6)
    assert _same_partition(cases["global"][1], cases["grad_accum"][1])
    assert _same_partition(cases["shard_map"][1], cases["shard_map + grad_accum"][1])
    assert not _same_partition(cases["global"][1], cases["shard_map"][1])


def test_sinusoidal_grid_formula():
    e = sinusoidal_grid(4, 8).reshape(4, 4, 8)
    c = np.linspace(-1, 1, 4)
    f = 1 / 10000 ** (4 * np.arange(2) / 8)
    y, x = 1, 3
    want = np.concatenate([np.sin(c[x] * f), np.cos(c[x] * f), np.sin(c[y] * f), np.cos(c[y] * f)])
    np.testing.assert_allclose(e[y, x], want, rtol=1e-5)


# ---------------------------------------------------------------- attention math
def _dense(p, x):
    w = np.asarray(p["weight"], np.float64)
    return x @ (w / np.sqrt(w.shape[0])) + np.asarray(p["bias"])


def _softmax(a, axis=-1):
    a = a - a.max(axis=axis, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=axis, keepdims=True)


def _heads(t, n):
    b, l, d = t.shape
    return t.reshape(b, l, n, d // n).transpose(0, 2, 1, 3)


def _merge(t):
    b, n, l, s = t.shape
    return t.transpose(0, 2, 1, 3).reshape(b, l, n * s)


def np_attention(p, kind, integration, norm, heads, iters, x, y, xp, yp):
    """The formulas of ganjax/nn/attention.py's docstring, written out naively in float64."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    d = x.shape[-1]
    s = d // heads
    q = _dense(p["to_queries"], x)
    k = _dense(p["to_keys"], y)
    v = _dense(p["to_values"], y)
    px, py = _dense(p["from_pos_map"], xp)[None], _dense(p["to_pos_map"], yp)[None]
    update = None
    if kind == "simplex":
        probs = _softmax(_heads(q + px, heads) @ _heads(k + py, heads).transpose(0, 1, 3, 2) / np.sqrt(s))
    elif kind == "official":
        e = _heads(np.concatenate([q, np.broadcast_to(px, q.shape)], -1), heads)
        c = np.broadcast_to(np.asarray(p["centroids"]), (x.shape[0],) + p["centroids"].shape[1:])
        for i in range(iters):
            if i > 0:
                a = probs / (probs.sum(axis=-2, keepdims=True) + 1e-8)
                c = a.transpose(0, 1, 3, 2) @ e
            probs = _softmax((e * np.asarray(p["att_weight"])) @ c.transpose(0, 1, 3, 2) / np.sqrt(s))
    else:
        ik = _dense(p["img_keys"], x) + px
        iv = _dense(p["img_values"], x)
        bu = _softmax(_heads(k + py, heads) @ _heads(ik, heads).transpose(0, 1, 3, 2) / np.sqrt(s))
        gathered = _merge(bu @ _heads(iv, heads))
        probs = _softmax(_heads(q + px, heads) @ _heads(gathered + py, heads).transpose(0, 1, 3, 2) / np.sqrt(s))
        update = _dense(p["ltnt_update"], gathered)
    control = _merge(probs @ _heads(v, heads))
    out = x
    if norm:
        if integration in ("add", "both"):
            out = out - out.mean(-1, keepdims=True)
        if integration in ("mul", "both"):
            out = out / np.sqrt((out ** 2).mean(-1, keepdims=True) + 1e-8)
    m = _dense(p["modulation"], control)
    gain, bias = (m[..., :d], m[..., d:]) if integration == "both" else (m, m)
    if integration != "add":
        out = out * (gain + 1)
    if integration != "mul":
        out = out + bias
    return out, probs, update


@pytest.mark.parametrize("kind,integration,heads,iters", [
    ("simplex", "mul", 1, 1), ("simplex", "add", 2, 1), ("simplex", "both", 2, 1),
    ("official", "mul", 1, 1), ("official", "add", 2, 1), ("official", "mul", 2, 3), ("official", "both", 1, 2),
    ("duplex", "mul", 2, 1), ("duplex", "add", 1, 1)])
@pytest.mark.parametrize("target", ["cpu", "tpu"])  # tpu: the positions-major logits, run here on the CPU
def test_attention_matches_numpy(kind, integration, heads, iters, target):
    b, f, t, c, w = 2, 16, 5, 8, 12
    x, y, xp, yp = randn(b, f, c), randn(b, t, w), sinusoidal_grid(4, w), randn(t, w)
    att = BipartiteAttention(c, heads=heads, kind=kind, integration=integration, norm=True, kmeans_iters=iters)
    v = att.init(jax.random.key(1), x, y, xp, yp)
    p = jax.tree_util.tree_map(np.asarray, meta.unbox(v["params"]))
    for name in ("modulation", "to_queries"):  # non-zero biases (they start at 0): the folds must carry them
        p[name]["bias"] = randn(*p[name]["bias"].shape)
    with backend.tracing_for(target):
        out, probs, update = att.apply({"params": p}, x, y, xp, yp)
    ref_out, ref_probs, ref_update = np_attention(p, kind, integration, True, heads, iters, x, y, xp, yp)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(out, ref_out, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    if kind == "duplex":
        np.testing.assert_allclose(update, ref_update, atol=1e-4, rtol=1e-4)
    else:
        assert update is None


def test_attention_dropout_only_in_training():
    x, y, xp, yp = randn(2, 16, 8), randn(2, 4, 8), sinusoidal_grid(4, 8), randn(4, 8)
    att = BipartiteAttention(8, kind="simplex", integration="mul", norm=True, dropout=0.5)
    v = att.init(jax.random.key(0), x, y, xp, yp)
    eval_probs = att.apply(v, x, y, xp, yp)[1]
    train_probs = att.apply(v, x, y, xp, yp, train=True, rngs={"dropout": jax.random.key(3)})[1]
    assert not np.allclose(eval_probs, train_probs)
    dropped = np.asarray(train_probs) == 0
    assert 0.3 < dropped.mean() < 0.6  # 1 - 0.75^2 of the cells on average
    kept = ~dropped
    ratio = np.asarray(train_probs)[kept] / np.asarray(eval_probs)[kept]
    np.testing.assert_allclose(ratio, 1 / 0.75 ** 2, rtol=1e-5)  # inverted-dropout scaling, twice
