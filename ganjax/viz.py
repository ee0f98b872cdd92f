"""Pictures of generator output: image grids written as PNG."""

import math
import os

import numpy as np
import PIL.Image


def to_uint8(images) -> np.ndarray:
    """Float images in [-1, 1] (NHWC or HWC) -> uint8 [0, 255], the StyleGAN mapping x * 127.5 + 128."""
    x = np.asarray(images, dtype=np.float32)
    return np.clip(np.rint(x * 127.5 + 128.0), 0, 255).astype(np.uint8)


def image_grid(images, cols: int | None = None) -> np.ndarray:
    """[N, H, W, C] float in [-1, 1] -> one uint8 [rows*H, cols*W, C] image, row-major, black padding.

    cols defaults to ceil(sqrt(N)), so 64 images make an 8x8 grid.
    """
    images = to_uint8(images)
    if images.ndim != 4:
        raise ValueError(f"image_grid needs [N, H, W, C] images, got shape {images.shape}")
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    return grid


def save_png(image: np.ndarray, path: str):
    """Write a uint8 HWC image (C = 1 or 3) as PNG, creating the parent directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image = np.asarray(image)
    PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def save_image_grid(images, path: str, cols: int | None = None):
    save_png(image_grid(images, cols), path)
