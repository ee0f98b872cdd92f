"""Fixed 2-D sinusoidal grid encodings for image positions (the reference's default 'sinus' type)."""

import functools

import numpy as np


@functools.cache
def sinusoidal_grid(res: int, dim: int) -> np.ndarray:
    """[res * res, dim], rows in row-major (y, x) order.

    With c = linspace(-1, 1, res) and f_i = 1 / 10000^(4 i / dim), i < dim / 4:
    emb[y, x] = [sin(c_x f), cos(c_x f), sin(c_y f), cos(c_y f)].
    """
    if dim % 4:
        raise ValueError(f"sinusoidal grid encoding needs a dimension divisible by 4, got {dim}")
    c = np.linspace(-1.0, 1.0, res, dtype=np.float32)[:, None]
    i = np.arange(dim // 4, dtype=np.float32)
    arg = c / np.power(np.float32(10000.0), 4 * i / dim)
    sin, cos = np.sin(arg), np.cos(arg)  # [res, dim/4]
    sx, cx = np.broadcast_to(sin[None], (res, res, dim // 4)), np.broadcast_to(cos[None], (res, res, dim // 4))
    sy, cy = np.broadcast_to(sin[:, None], (res, res, dim // 4)), np.broadcast_to(cos[:, None], (res, res, dim // 4))
    emb = np.concatenate([sx, cx, sy, cy], axis=-1).astype(np.float32)
    emb.setflags(write=False)
    return emb.reshape(res * res, dim)
