"""Procedural CLEVR-like 2-D scenes: shaded objects with soft shadows on a lit floor, in vectorised NumPy.

Every image is a pure function of (seed, split, index): its own `np.random.Generator` draws the scene
description, so an image never depends on which batch it was rendered in. Rendering uses signed distance
functions (SDFs): the coverage of a pixel is the SDF clipped over one pixel width, which antialiases the
edges at any resolution without supersampling; the same SDF gives each object a bevel/sphere normal for
Lambert + specular shading and a blurred, offset copy for its shadow.
"""

import dataclasses

import numpy as np

SHAPES = ("circle", "square", "triangle", "ring")
# CLEVR's palette (sRGB 0..255): gray, red, blue, green, brown, purple, cyan, yellow.
COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
PALETTE = np.array(
    [[87, 87, 87], [173, 35, 35], [42, 75, 215], [29, 105, 20],
     [129, 74, 25], [129, 38, 192], [41, 208, 208], [255, 238, 51]],
    np.float32,
) / 255.0
SIZES = (0.085, 0.115, 0.15)  # object radius as a fraction of the image side, before perspective
MATERIALS = ("rubber", "metal")
SPLIT_IDS = {"train": 0, "test": 1}

_LIGHT = np.array([-0.55, -0.65, 0.52], np.float32) / np.linalg.norm([-0.55, -0.65, 0.52])
_HALF = (_LIGHT + np.array([0, 0, 1], np.float32)) / np.linalg.norm(_LIGHT + np.array([0, 0, 1], np.float32))
_SHADOW_OFFSET = np.array([0.45, 0.55], np.float32)  # shadow shift along the light, in object radii
# Window around an object, in radii: the body reaches 1.15 r (triangle corners) from the centre, the shadow
# another (0.45, 0.55) r along the light plus half its penumbra (0.175 r); pixels of slack cover antialiasing.
_REACH = 1.2
_WINDOW_RADII = 2 * _REACH + 0.55 + 0.2
_ELEMENTS_PER_CHUNK = 1 << 20  # N * K * R * R floats per rendering chunk (temporaries of a few MB)


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """What a scene renderer needs; also the metadata stored with each image (padded with -1)."""

    min_objects: int = 2
    max_objects: int = 8

    def validate(self):
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"scenes: need 1 <= min_objects <= max_objects (got {self.min_objects}, {self.max_objects})")


def _sample_scene(rng: np.random.Generator, spec: SceneSpec):
    """Draw one scene: objects sorted back to front (by floor depth y)."""
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    objs = []
    for _ in range(n):
        size_class = int(rng.integers(len(SIZES)))
        for _attempt in range(20):  # rejection sampling keeps every object at least partly visible
            y = rng.uniform(0.28, 0.84)
            persp = 0.7 + 0.55 * y  # nearer objects (lower in the image) look bigger
            r = SIZES[size_class] * persp
            x = rng.uniform(0.08 + r * 0.6, 0.92 - r * 0.6)
            if all((x - o[0]) ** 2 + (y - o[1]) ** 2 > (0.62 * (r + o[2])) ** 2 for o in objs):
                break
        objs.append((x, y, r, size_class))
    depth = np.argsort([o[1] for o in objs], kind="stable")
    scene = {
        "x": np.array([objs[i][0] for i in depth], np.float32),
        "y": np.array([objs[i][1] for i in depth], np.float32),
        "r": np.array([objs[i][2] for i in depth], np.float32),
        "size": np.array([objs[i][3] for i in depth], np.int32),
        "shape": rng.integers(len(SHAPES), size=n).astype(np.int32),
        "color": rng.integers(len(COLORS), size=n).astype(np.int32),
        "material": rng.integers(len(MATERIALS), size=n).astype(np.int32),
        "angle": rng.uniform(0, 2 * np.pi, size=n).astype(np.float32),
        "tint": rng.uniform(0.92, 1.08, size=n).astype(np.float32),
        # floor: brightness, warm/cool tint, and a coarse value-noise texture
        "floor": np.float32(rng.uniform(0.52, 0.72)),
        "floor_tint": rng.uniform(-0.025, 0.025, size=3).astype(np.float32),
        "texture": rng.uniform(-1, 1, size=(6, 6)).astype(np.float32),
    }
    return scene


def _pad(scenes, key, k, fill, dtype):
    out = np.full((len(scenes), k), fill, dtype)
    for i, s in enumerate(scenes):
        out[i, -len(s[key]):] = s[key]  # right-aligned: slot k-1 is the nearest object
    return out


def _sdf(shape: int, u, v, r):
    """Signed distance (negative inside) of one shape kind in the objects' rotated frames; r: object radius."""
    if shape == 0:  # circle
        return np.sqrt(u * u + v * v) - r
    if shape == 1:  # square with rounded corners, half side 0.8 r
        h = 0.8 * r
        round_r = 0.18 * h
        qx, qy = np.abs(u) - (h - round_r), np.abs(v) - (h - round_r)
        return (np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
                + np.minimum(np.maximum(qx, qy), 0) - round_r)
    if shape == 2:  # equilateral triangle with circumradius 1.15 r (point up), exact SDF after folding
        k = np.float32(np.sqrt(3.0))
        a = 1.15 * r * k / 2  # half side
        px, py = np.abs(u) - a, -v + a / k
        fold = px + k * py > 0
        px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
        px = px - np.clip(px, -2 * a, 0)
        return -np.sqrt(px * px + py * py) * np.sign(py)
    return np.abs(np.sqrt(u * u + v * v) - 0.72 * r) - 0.28 * r  # ring


# Width of the rounded rim, in radii: spheres and tubes are round all the way in; squares and triangles
# are flat-topped with a bevel.
_BEVEL = np.array([1.0, 0.3, 0.3, 0.28], np.float32)


def _render_chunk(scenes, resolution: int, k: int) -> np.ndarray:
    n, res = len(scenes), resolution
    px = 1.0 / res

    # All objects of the chunk as one flat list [M]; `slot` is the depth rank (k-1 = nearest).
    counts = [len(s["x"]) for s in scenes]
    img_id = np.repeat(np.arange(n), counts)
    slot = np.concatenate([np.arange(k - m, k) for m in counts])

    def cat(key, dtype=np.float32):
        return np.concatenate([s[key] for s in scenes]).astype(dtype)

    x, y, r, angle = (cat(key)[:, None, None] for key in ("x", "y", "r", "angle"))
    shape, metal = cat("shape", np.int32), cat("material", np.int32)[:, None, None] == 1
    ca, sa = np.cos(angle), np.sin(angle)
    # Each object is shaded in a W x W pixel window that holds its body and its shadow (everything outside
    # has zero coverage and zero shadow, so the result equals a full-image render, a few times faster).
    w = min(res, int(np.ceil(_WINDOW_RADII * r.max() * res)) + 6)
    span = np.arange(w)
    x0 = np.clip(np.floor((x[:, 0, 0] - _REACH * r[:, 0, 0]) * res) - 2, 0, res - w).astype(np.int32)
    y0 = np.clip(np.floor((y[:, 0, 0] - _REACH * r[:, 0, 0]) * res) - 2, 0, res - w).astype(np.int32)
    rows, cols = y0[:, None, None] + span[None, :, None], x0[:, None, None] + span[None, None, :]  # [M,W,1], [M,1,W]
    full = (len(x), w, w)
    dx = np.broadcast_to((cols + 0.5) * px - x, full).astype(np.float32)
    dy = np.broadcast_to((rows + 0.5) * px - y, full).astype(np.float32)
    sx, sy = dx - _SHADOW_OFFSET[0] * r, dy - _SHADOW_OFFSET[1] * r  # the shadow: shifted along the light
    sdf = np.empty(dx.shape, np.float32)
    shadow_sdf = np.empty(dx.shape, np.float32)
    for kind in range(len(SHAPES)):  # each object's own shape only
        sel = shape == kind
        if sel.any():
            cs, ss, rs = ca[sel], sa[sel], r[sel]
            sdf[sel] = _sdf(kind, cs * dx[sel] + ss * dy[sel], -ss * dx[sel] + cs * dy[sel], rs)
            shadow_sdf[sel] = _sdf(kind, cs * sx[sel] + ss * sy[sel], -ss * sx[sel] + cs * sy[sel], rs)
    cover = np.clip(0.5 - sdf / px, 0.0, 1.0)  # antialiased: the edge ramps over one pixel

    # Normal: radial direction tilted by the bevel profile (outward on the outer half of a ring).
    dist = np.sqrt(dx * dx + dy * dy) + 1e-6
    sign = np.where((shape == 3)[:, None, None], np.sign(dist - 0.72 * r), 1.0)
    rho = 1.0 - np.clip(-sdf / (_BEVEL[shape][:, None, None] * r), 0.0, 1.0)
    nz = np.sqrt(np.maximum(1.0 - rho * rho, 0.0))
    nx, ny = rho * sign * dx / dist, rho * sign * dy / dist
    diffuse = np.clip(nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2], 0.0, 1.0)
    spec = np.clip(nx * _HALF[0] + ny * _HALF[1] + nz * _HALF[2], 0.0, 1.0)
    spec = np.where(metal, 0.85 * spec**40, 0.12 * spec**8)
    shade = np.where(metal, 0.25 + 0.95 * diffuse, 0.42 + 0.72 * diffuse)
    lit = (PALETTE[cat("color", np.int32)] * cat("tint")[:, None])[:, None, None, :] * shade[..., None]
    lit += spec[..., None]  # [M,R,R,3]

    # Soft shadows (penumbra ~0.35 r) darken the floor only.
    soft = np.maximum(0.35 * r, 1.5 * px)
    shadow = 0.5 * np.clip(0.5 - shadow_sdf / soft, 0.0, 1.0)
    floor_light = np.ones((n, res, res), np.float32)
    for j in range(k):  # at most one object per image in each depth slot, so no index repeats
        sel = slot == j
        floor_light[img_id[sel][:, None, None], rows[sel], cols[sel]] *= 1.0 - shadow[sel]

    # Floor: lighter far away (top), a faint vignette and a smooth value-noise texture.
    base = np.array([s["floor"] for s in scenes], np.float32)[:, None, None]
    c = (np.arange(res, dtype=np.float32) + 0.5) * px
    gx, gy = c[None, :], c[:, None]
    vignette = 1.0 - 0.25 * ((gx - 0.5) ** 2 + (gy - 0.45) ** 2)
    texture = _upsample(np.stack([s["texture"] for s in scenes]), res)
    floor = base * (1.08 - 0.22 * gy) * vignette + 0.018 * texture
    tint_floor = np.stack([s["floor_tint"] for s in scenes])[:, None, None, :]
    img = (floor * floor_light)[..., None] + tint_floor  # [N,R,R,3]

    for j in range(k):  # painter's algorithm, back to front
        sel = slot == j
        at = (img_id[sel][:, None, None], rows[sel], cols[sel])
        a = cover[sel][..., None]
        img[at] = img[at] * (1.0 - a) + lit[sel] * a
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _upsample(grid: np.ndarray, res: int) -> np.ndarray:
    """Bilinear upsampling of [N, g, g] noise to [N, res, res] (a smooth floor texture)."""
    g = grid.shape[-1]
    t = (np.arange(res, dtype=np.float32) + 0.5) / res * (g - 1)
    i0 = np.minimum(t.astype(np.int32), g - 2)
    w = t - i0
    rows = grid[:, i0, :] * (1 - w)[None, :, None] + grid[:, i0 + 1, :] * w[None, :, None]
    return rows[:, :, i0] * (1 - w)[None, None, :] + rows[:, :, i0 + 1] * w[None, None, :]


def render(seed: int, split: str, indices, resolution: int, spec: SceneSpec = SceneSpec()):
    """Render images `indices` of a split. Returns (uint8 [N, R, R, 3], metadata dict of [N, ...] arrays).

    Metadata (objects back to front, padded to spec.max_objects with -1 on the left): num_objects [N],
    shape, color, size, material [N, max_objects] as indices into SHAPES, COLORS, SIZES, MATERIALS.
    """
    spec.validate()
    if split not in SPLIT_IDS:
        raise ValueError(f"scenes: split must be one of {sorted(SPLIT_IDS)} (got {split!r})")
    indices = np.asarray(indices, np.int64).reshape(-1)
    scenes = [_sample_scene(np.random.default_rng([seed, SPLIT_IDS[split], int(i)]), spec) for i in indices]
    k = spec.max_objects
    chunk = max(1, _ELEMENTS_PER_CHUNK // (k * resolution * resolution))
    images = np.concatenate(
        [_render_chunk(scenes[s:s + chunk], resolution, k) for s in range(0, len(scenes), chunk)]
    ) if scenes else np.zeros((0, resolution, resolution, 3), np.uint8)
    meta = {"num_objects": np.array([len(s["x"]) for s in scenes], np.int32)}
    for key in ("shape", "color", "size", "material"):
        meta[key] = _pad(scenes, key, k, -1, np.int32)
    return images, meta
