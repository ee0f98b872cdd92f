"""Adaptive discriminator augmentation: each op against an independent NumPy/SciPy reference, the identity at
p = 0, gradients through the pipeline, the adaptation of p, and ADA inside the compiled train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from ganjax.augment import ops
from ganjax.augment.adaptive import AugmentConfig
from ganjax.config import ConfigError, base_config, validate
from test_train_step import run_steps, tiny_config

H = W = 32
B = 6


def smooth_images(batch=B, channels=3, seed=0):
    """Sums of cos(pi k r / (H-1)) cos(pi l c / (W-1)) with k, l <= 3: smooth, and smooth again when
    continued by whole-sample reflection at the border (which the pipeline and scipy's 'mirror' both use),
    so the only differences left are interpolation errors. Values of order 1 (std ~1, peaks ~3)."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:H, 0:W]
    out = np.zeros((batch, H, W, channels))
    for k in range(4):
        for m in range(4):
            basis = np.cos(np.pi * k * r / (H - 1)) * np.cos(np.pi * m * c / (W - 1))
            out += rng.normal(size=(batch, 1, 1, channels)) * basis[None, :, :, None] * 0.25
    return out.astype(np.float32)


def rot(t):
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def diag(sx, sy):
    return np.diag([sx, sy, 1.0])


def shift(tx, ty):
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])


def forward_map(params, b, names):
    """The documented forward transform of sample b (input -> output, centred pixel units, x right, y down),
    built from the drawn parameters in the pipeline's order."""
    a = np.eye(3)
    for op in names:
        v = np.asarray(params[op][b], np.float64)
        if op == "xflip":
            step = diag(1 - 2 * v, 1)
        elif op == "rotate90":
            step = rot(np.pi / 2 * v)
        elif op in ("xint", "xfrac"):
            step = shift(*v)
        elif op == "scale":
            step = diag(v, v)
        elif op == "rotate":
            step = rot(v[0]) if "aniso" in names else rot(v[1]) @ rot(v[0])
        elif op == "aniso":
            step = diag(v, 1 / v)
            if "rotate" in names:
                step = rot(np.asarray(params["rotate"][b])[1]) @ step
        a = step @ a
    return a


def scipy_warp(image, forward):
    """image [H, W, C] resampled by scipy: output pixel shows the input at inverse(forward) of its centre,
    cubic spline, whole-sample reflection ('mirror')."""
    m = np.linalg.inv(forward)
    cx, cy = W / 2 - 0.5, H / 2 - 0.5
    # (row, col) index space: row = y + cy, col = x + cx.
    matrix = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
    offset = np.array([m[1, 2] + cy - m[1, 0] * cx - m[1, 1] * cy, m[0, 2] + cx - m[0, 0] * cx - m[0, 1] * cy])
    return np.stack([scipy.ndimage.affine_transform(image[..., ch].astype(np.float64), matrix, offset, order=3,
                                                    mode="mirror") for ch in range(image.shape[-1])], -1)


def draw_and_apply(names, x, seed=1, p=1.0):
    draw = ops.sample(jax.random.key(seed), x.shape[0], H, W, p, names)
    return draw, np.asarray(ops.apply(jnp.asarray(x), draw, names))


# Interpolation error of the pipeline (2x upsampling by a 12-tap windowed sinc, bilinear on the 2x grid, 2x
# decimation) against a cubic spline on these images (content at <= 3/62 cycles per pixel): measured at most
# 2.1e-3 for the exact-grid ops (flip, quarter turns, integer shifts: the filters' round trip) and 1.1e-2
# for rotation and scaling (bilinear on the 2x grid), over 3 draws (Zen 4); float32 rounding (~1e-6) is far
# below, so the bound holds on any CPU.
GEOM_ATOL = 2e-2


@pytest.mark.parametrize("names", [(op,) for op in ops.GEOMETRIC] + [ops.GEOMETRIC])
def test_geometric_ops_match_scipy_resampling(names):
    x = smooth_images()
    draw, y = draw_and_apply(names, x)
    assert bool(np.all(np.asarray(draw.geometric_on))), "p = 1 draws every op"  # (xflip/rotate90 may draw 0)
    for b in range(B):
        want = scipy_warp(x[b], forward_map(draw.params, b, names))
        np.testing.assert_allclose(y[b], want, atol=GEOM_ATOL, err_msg=f"{names} sample {b}")


def test_flips_and_quarter_turns_are_the_array_ops():
    """Conventions, against NumPy's own index ops: xflip mirrors columns, a quarter turn takes x (right)
    to y (down), clockwise as displayed."""
    x = smooth_images(batch=16)
    for name, expected in (("xflip", lambda img, i: img[:, ::-1] if i else img),
                           ("rotate90", lambda img, i: np.rot90(img, k=-int(i), axes=(0, 1)))):
        draw, y = draw_and_apply((name,), x, seed=3)
        drawn = np.asarray(draw.params[name])
        assert len(set(drawn.tolist())) > 1
        for b in range(16):
            np.testing.assert_allclose(y[b], expected(x[b], drawn[b]), atol=GEOM_ATOL)


def hue_reference(x, theta):
    """Rodrigues' rotation of each RGB vector about the grey axis."""
    k = np.ones(3) / np.sqrt(3)
    return (x * np.cos(theta) + np.cross(k, x) * np.sin(theta) + k * (x @ k)[..., None] * (1 - np.cos(theta)))


COLOR_REFERENCE = {
    "brightness": lambda x, v: x + v,
    "contrast": lambda x, v: x * v,
    "lumaflip": lambda x, v: x - 2 * v * x.mean(-1, keepdims=True),
    "hue": hue_reference,
    "saturation": lambda x, v: x.mean(-1, keepdims=True) + v * (x - x.mean(-1, keepdims=True)),
}


@pytest.mark.parametrize("names", [(op,) for op in ops.COLOR] + [ops.COLOR])
def test_color_ops_match_closed_forms(names):
    x = np.random.default_rng(2).uniform(-1, 1, (B, H, W, 3)).astype(np.float32)
    draw, y = draw_and_apply(names, x)
    for b in range(B):
        want = x[b].astype(np.float64)
        for op in names:  # in the pipeline's order
            want = COLOR_REFERENCE[op](want, float(draw.params[op][b]))
        # float32 products of values ~1: a few ulps of the largest value in the chain
        np.testing.assert_allclose(y[b], want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))


def test_grey_images_take_the_mean_of_the_color_map():
    x = smooth_images(channels=1)
    draw, y = draw_and_apply(ops.COLOR, x)
    rgb = np.asarray(ops.recolor(jnp.asarray(np.repeat(x, 3, -1)), draw.color))
    want = rgb.mean(-1, keepdims=True)  # float32 rounding of a few products: relative to the values' scale
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_p_zero_is_the_identity_bit_for_bit():
    x = jax.random.normal(jax.random.key(0), (8, H, W, 3))
    for p in (0.0, jnp.float32(0.0)):
        assert bool(jnp.all(ops.augment(x, jax.random.key(1), p, ops.parse_ops("bgc")) == x))
    # and samples that drew nothing keep their pixels at p > 0
    draw = ops.sample(jax.random.key(4), 8, H, W, 0.05, ops.parse_ops("bgc"))
    y = ops.apply(x, draw, ops.parse_ops("bgc"))
    untouched = ~np.asarray(draw.geometric_on | draw.color_on)
    assert untouched.any() and np.array_equal(np.asarray(y)[untouched], np.asarray(x)[untouched])


def test_gradients_flow_through_the_pipeline_to_the_generator():
    """A toy generator (a linear map of its params) under the full pipeline at p = 1: the gradient of a
    D-like score w.r.t. the params agrees with central finite differences (the pipeline is linear in the
    image, so they agree to rounding)."""
    names = ops.parse_ops("bgc")
    draw = ops.sample(jax.random.key(7), 2, H, W, 1.0, names)
    basis = jnp.asarray(smooth_images(batch=2, seed=3))
    weights = jax.random.normal(jax.random.key(8), (2, H, W, 3))

    def score(theta):
        return jnp.sum(weights * ops.apply(theta * basis, draw, names))

    g = jax.grad(score)(jnp.float32(0.7))
    eps = 0.05
    fd = (score(jnp.float32(0.7 + eps)) - score(jnp.float32(0.7 - eps))) / (2 * eps)
    assert abs(float(g)) > 1.0
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-3)


def ada(**overrides):
    c = base_config().augment
    c.mode = "ada"
    for k, v in overrides.items():
        c[k] = v
    return AugmentConfig.from_config(c)


@pytest.mark.parametrize("sign, direction", [(1.0, 1), (-1.0, -1)])
def test_p_moves_toward_the_target_at_the_configured_speed(sign, direction):
    cfg = ada(p=0.5, interval=4, speed_kimg=2.0)
    state = cfg.init_state()
    ps = []
    for step in range(12):
        state = cfg.adjust(state, jnp.float32(sign), jnp.int32(step), batch_size=50)
        ps.append(float(state["p"]))
    rate = 50 * 4 / 2000.0  # 0.1 per adjustment
    want = [0.5 + direction * rate * ((s + 1) // 4) for s in range(12)]
    np.testing.assert_allclose(ps, want, rtol=1e-6)


def test_p_stays_in_zero_one():
    cfg = ada(p=0.05, interval=1, speed_kimg=0.01)
    state = cfg.init_state()
    for step in range(3):
        state = cfg.adjust(state, jnp.float32(-1.0), jnp.int32(step), batch_size=32)
    assert float(state["p"]) == 0.0
    for step in range(3, 40):
        state = cfg.adjust(state, jnp.float32(1.0), jnp.int32(step), batch_size=32)
    assert float(state["p"]) == 1.0


def test_off_and_fixed_keep_no_state():
    c = base_config().augment
    assert AugmentConfig.from_config(c).init_state() == {}
    c.mode, c.p = "fixed", 0.3
    fixed = AugmentConfig.from_config(c)
    assert fixed.init_state() == {} and float(fixed.probability({})) == pytest.approx(0.3)


@pytest.mark.parametrize("field, value, message", [
    ("ops", "bgc,blur", "augment.ops: 'bgc,blur' must be a comma list of augmentations"),
    ("mode", "adaptive", "augment.mode: 'adaptive' is not one of ('off', 'ada', 'fixed')"),
    ("target", 1.0, "augment.target: 1.0 is not in (0, 1)"),
    ("target", 0.0, "augment.target: 0.0 is not in (0, 1)"),
    ("p", 1.5, "augment.p: 1.5 is not in [0, 1]"),
    ("interval", 0, "augment.interval: 0 is not in [1, inf)"),
])
def test_bad_augment_config_names_the_field(field, value, message):
    c = base_config()
    c.augment[field] = value
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert message in str(e.value)
    if field == "ops":
        assert "(unknown: ['blur'])" in str(e.value)


@pytest.mark.parametrize("strategy, devices, accum", [("dp", 1, 1), ("shard_map", 2, 2)])
def test_ada_runs_in_the_compiled_step_and_adapts_p(strategy, devices, accum):
    """Tiny GAN, ADA on with R1 every step (so R1 sees augmented reals too), in the global program and in the
    per-device one with micro-batches: p follows the rule from the signs the step reports (averaged over
    devices and micro-batches), and the gradients stay finite."""
    c = tiny_config(strategy, r1_interval=1, grad_accum=accum)
    c.augment.mode, c.augment.p, c.augment.interval, c.augment.speed_kimg = "ada", 0.5, 2, 0.1
    _, state, metrics, _ = run_steps(c, jax.devices()[:devices], 4, aot=True)
    p, signs = 0.5, 0.0
    for step, m in enumerate(metrics):
        assert float(m["augment/p"]) == pytest.approx(p, abs=1e-6)
        assert np.isfinite(float(m["grad_norm/g_main"])) and float(m["grad_norm/g_main"]) > 0
        signs += float(m["D/signs_real"])
        if (step + 1) % 2 == 0:
            p = min(max(p + np.sign(signs / 2 - 0.6) * 8 * 2 / 100.0, 0.0), 1.0)
            signs = 0.0
    assert float(state.augment["p"]) == pytest.approx(p, abs=1e-6)
