"""The augmentations of StyleGAN2-ADA's `bgc` pipeline, drawn per sample, and their application.

Each augmentation of a sample is applied with probability p, independently (the two arbitrary rotations
each with 1 - sqrt(1 - p), so that some rotation happens with probability p), in this order:
  geometric (composed into one affine map, resampled once: ganjax/augment/resample.py)
    xflip      mirror left-right, with probability 1/2 when drawn
    rotate90   0, 1, 2 or 3 quarter turns
    xint       integer translation, uniform in +-0.125 of the size
    scale      isotropic, 2^N(0, 0.2^2)
    rotate     arbitrary angle, uniform in [-pi, pi] (drawn twice: before and after aniso)
    aniso      anisotropic, x by 2^N(0, 0.2^2), y by its inverse
    xfrac      fractional translation, N(0, 0.125^2) of the size
  colour (one 4x4 affine map of (r, g, b, 1); images are in [-1, 1], so 0 is mid-grey)
    brightness add N(0, 0.2^2)
    contrast   multiply by 2^N(0, 0.5^2)
    lumaflip   mirror along the grey axis (1, 1, 1), with probability 1/2 when drawn
    hue        rotate about the grey axis, uniform in [-pi, pi]
    saturation scale the part orthogonal to the grey axis by 2^N(0, 1)
The ranges are StyleGAN2-ADA's defaults. A sample none of whose geometric (colour) augmentations were drawn
keeps its exact pixels through that stage, so at p = 0 the pipeline is the identity bit for bit.
Angles: positive turns x (right) towards y (down), i.e. clockwise as displayed.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ganjax.augment.resample import warp

GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
OPS = GEOMETRIC + COLOR
# Names that stand for several ops (StyleGAN2-ADA's pipeline letters: blit, geometric, colour).
GROUPS = {"b": ("xflip", "rotate90", "xint"), "g": ("scale", "rotate", "aniso", "xfrac"), "c": COLOR}
GROUPS["bg"] = GROUPS["b"] + GROUPS["g"]
GROUPS["bgc"] = GROUPS["bg"] + COLOR
NAMES = OPS + tuple(GROUPS)  # what augment.ops may list

XINT_MAX, SCALE_STD, ROTATE_MAX, ANISO_STD, XFRAC_STD = 0.125, 0.2, 1.0, 0.2, 0.125
BRIGHTNESS_STD, CONTRAST_STD, HUE_MAX, SATURATION_STD = 0.2, 0.5, 1.0, 1.0


def parse_ops(spec: str) -> tuple[str, ...]:
    """'bgc' or a comma list of op and group names -> the ops, in pipeline order. Raises ValueError naming
    an unknown name."""
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    bad = [s for s in items if s not in NAMES]
    if bad or not items:
        raise ValueError(f"{spec!r} must be a comma list of augmentations {OPS} or groups {tuple(GROUPS)}"
                         + (f" (unknown: {bad})" if bad else ""))
    chosen = {op for s in items for op in GROUPS.get(s, (s,))}
    return tuple(op for op in OPS if op in chosen)


# -- affine maps, batched [B, 3, 3] (2-D) and [B, 4, 4] (colour) -------------------------------------------

def _eye(b, n):
    return jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (b, n, n))


def _affine2(a, b_, c, d, tx, ty):
    """Rows (a, b, tx), (c, d, ty), (0, 0, 1) from [B] arrays."""
    z, o = jnp.zeros_like(a), jnp.ones_like(a)
    return jnp.stack([jnp.stack([a, b_, tx], -1), jnp.stack([c, d, ty], -1), jnp.stack([z, z, o], -1)], -2)


def _scale2(sx, sy):
    z = jnp.zeros_like(sx)
    return _affine2(sx, z, z, sy, z, z)


def _rotate2(theta):
    c, s = jnp.cos(theta), jnp.sin(theta)
    z = jnp.zeros_like(theta)
    return _affine2(c, -s, s, c, z, z)


def _translate2(tx, ty):
    o, z = jnp.ones_like(tx), jnp.zeros_like(tx)
    return _affine2(o, z, z, o, tx, ty)


# The grey axis, homogeneous. NumPy, not jnp: a jnp constant at import would start JAX's backends, before a
# command has set the device count or libtpu's environment.
_GREY = np.array([1.0, 1.0, 1.0, 0.0]) / np.sqrt(3.0)


def _color_linear(m3, shift=None):
    """[B, 3, 3] linear part (and [B, 3] shift) -> [B, 4, 4] affine map of (r, g, b, 1)."""
    b = m3.shape[0]
    shift = jnp.zeros((b, 3), jnp.float32) if shift is None else shift
    top = jnp.concatenate([m3, shift[:, :, None]], axis=2)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0]), (b, 1, 4))
    return jnp.concatenate([top, bottom], axis=1)


def _hue_rotation(theta):
    """Rotation by theta about the grey axis (Rodrigues), [B, 3, 3]."""
    k = _GREY[:3]
    kx = jnp.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    c, s = jnp.cos(theta)[:, None, None], jnp.sin(theta)[:, None, None]
    return c * jnp.eye(3) + s * kx + (1 - c) * jnp.outer(k, k)


@dataclasses.dataclass
class Draw:
    """One batch's random augmentations: `geometric` [B, 3, 3] maps output to input positions, `color`
    [B, 4, 4] maps input colours to output ones; `geometric_on` / `color_on` [B] whether any op of that
    stage was drawn for the sample; `params` each op's drawn value per sample (its identity value where it
    was not drawn: 0 turns, 0 shift, scale 1, ...)."""

    geometric: jax.Array
    color: jax.Array
    geometric_on: jax.Array
    color_on: jax.Array
    params: dict


def sample(key, batch: int, height: int, width: int, p, ops: tuple[str, ...]) -> Draw:
    """Per-sample draws of `ops` at probability p (a scalar, traced or not)."""
    b = batch
    keys = iter(())  # each op's own keys, set below: an op's draws do not depend on which others are on

    def gate(prob):  # [B] bool: the op is applied to the sample
        return jax.random.uniform(next(keys), (b,)) < prob

    def uniform(lo, hi, shape=(b,)):
        return jax.random.uniform(next(keys), shape, minval=lo, maxval=hi)

    def normal(shape=(b,)):
        return jax.random.normal(next(keys), shape)

    g_inv, c_fwd = _eye(b, 3), _eye(b, 4)
    g_on = jnp.zeros((b,), bool)
    c_on = jnp.zeros((b,), bool)
    params = {}
    p_rot = 1 - jnp.sqrt(jnp.maximum(1 - jnp.asarray(p, jnp.float32), 0.0))
    for op in ops:
        keys = iter(jax.random.split(jax.random.fold_in(key, OPS.index(op)), 4))
        if op == "rotate":
            on1, on2 = gate(p_rot), gate(p_rot)
            t1 = jnp.where(on1, uniform(-jnp.pi, jnp.pi) * ROTATE_MAX, 0.0)
            t2 = jnp.where(on2, uniform(-jnp.pi, jnp.pi) * ROTATE_MAX, 0.0)
            params[op] = jnp.stack([t1, t2], -1)
            on = on1 | on2
        else:
            on = gate(p)
        if op == "xflip":
            i = jnp.where(on, jax.random.randint(next(keys), (b,), 0, 2), 0)
            params[op] = i
            inv = _scale2(1.0 - 2.0 * i, jnp.ones((b,)))
        elif op == "rotate90":
            i = jnp.where(on, jax.random.randint(next(keys), (b,), 0, 4), 0)
            params[op] = i
            inv = _rotate2(-jnp.pi / 2 * i)
        elif op == "xint":
            t = jnp.where(on[:, None], jnp.round(uniform(-1.0, 1.0, (b, 2)) * XINT_MAX
                                                 * jnp.array([width, height])), 0.0)
            params[op] = t
            inv = _translate2(-t[:, 0], -t[:, 1])
        elif op == "scale":
            s = jnp.where(on, 2.0 ** (normal() * SCALE_STD), 1.0)
            params[op] = s
            inv = _scale2(1 / s, 1 / s)
        elif op == "aniso":
            s = jnp.where(on, 2.0 ** (normal() * ANISO_STD), 1.0)
            params[op] = s
            inv = _scale2(1 / s, s)
        elif op == "rotate":
            # The second rotation follows aniso (StyleGAN2-ADA's order), or this one directly without it.
            inv = _rotate2(-params[op][:, 0])
            if "aniso" not in ops:
                inv = inv @ _rotate2(-params[op][:, 1])
        elif op == "xfrac":
            t = jnp.where(on[:, None], normal((b, 2)) * XFRAC_STD * jnp.array([width, height]), 0.0)
            params[op] = t
            inv = _translate2(-t[:, 0], -t[:, 1])
        elif op == "brightness":
            v = jnp.where(on, normal() * BRIGHTNESS_STD, 0.0)
            params[op] = v
            fwd = _color_linear(_eye(b, 3), jnp.stack([v, v, v], -1))
        elif op == "contrast":
            v = jnp.where(on, 2.0 ** (normal() * CONTRAST_STD), 1.0)
            params[op] = v
            fwd = _color_linear(v[:, None, None] * _eye(b, 3))
        elif op == "lumaflip":
            i = jnp.where(on, jax.random.randint(next(keys), (b,), 0, 2), 0)
            params[op] = i
            k = _GREY[:3]
            fwd = _color_linear(jnp.eye(3) - 2.0 * i[:, None, None] * jnp.outer(k, k))
        elif op == "hue":
            v = jnp.where(on, uniform(-jnp.pi, jnp.pi) * HUE_MAX, 0.0)
            params[op] = v
            fwd = _color_linear(_hue_rotation(v))
        elif op == "saturation":
            v = jnp.where(on, 2.0 ** (normal() * SATURATION_STD), 1.0)
            params[op] = v
            k = _GREY[:3]
            grey = jnp.outer(k, k)
            fwd = _color_linear(grey + v[:, None, None] * (jnp.eye(3) - grey))
        else:
            raise ValueError(f"augment.ops: unknown augmentation {op!r}; known: {OPS}")
        if op in GEOMETRIC:
            g_inv = g_inv @ inv  # output -> input: the inverses in the order the ops apply
            g_on = g_on | on
        else:
            c_fwd = fwd @ c_fwd
            c_on = c_on | on
        if op == "aniso" and "rotate" in ops:
            g_inv = g_inv @ _rotate2(-params["rotate"][:, 1])
    return Draw(g_inv, c_fwd, g_on, c_on, params)


def recolor(images, matrices):
    """images [B, H, W, C] (C = 3, or 1: grey treated as (g, g, g) and the result's mean channel kept)
    through [B, 4, 4] colour maps."""
    m, t = matrices[:, :3, :3], matrices[:, :3, 3]
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        gain = jnp.mean(jnp.sum(m, axis=2), axis=1)  # mean over output channels of the row sums
        out = x * gain[:, None, None, None] + jnp.mean(t, axis=1)[:, None, None, None]
    else:
        out = jnp.einsum("bhwc,brc->bhwr", x, m) + t[:, None, None, :]
    return out.astype(images.dtype)


def _stage(images, on, transform):
    """transform(images) where `on` [B], the images elsewhere; skipped (a lax.cond) when no sample drew it,
    so adaptive runs at p = 0 do not pay for the resampling."""
    return jax.lax.cond(jnp.any(on), lambda x: jnp.where(on[:, None, None, None], transform(x), x),
                        lambda x: x, images)


def apply(images, draw: Draw, ops: tuple[str, ...]):
    """images [B, H, W, C] through the drawn augmentations; samples without a draw in a stage keep their
    pixels exactly."""
    out = images
    if any(op in GEOMETRIC for op in ops):
        out = _stage(out, draw.geometric_on, lambda x: warp(x, draw.geometric))
    if any(op in COLOR for op in ops):
        out = _stage(out, draw.color_on, lambda x: recolor(x, draw.color))
    return out


def augment(images, key, p, ops: tuple[str, ...]):
    """The pipeline on a batch: each sample's augmentations drawn at probability p."""
    b, h, w, _ = images.shape
    return apply(images, sample(key, b, h, w, p, ops), ops)
