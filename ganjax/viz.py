"""Pictures of generator output: image grids (PNG), attention-map overlays, animated GIFs.

Pure NumPy/PIL: the arrays come from the generator (ganjax/insight.py drives it); here they only become
uint8 pictures. Images are float NHWC in [-1, 1] or already uint8.
"""

import colorsys
import math
import os

import numpy as np
import PIL.Image


def to_uint8(images) -> np.ndarray:
    """Float images in [-1, 1] (NHWC or HWC) -> uint8 [0, 255] as StyleGAN: clip(x * 127.5 + 128) truncated.

    Truncation (not rounding) makes uint8 -> u / 127.5 - 1 -> uint8 exact: u / 127.5 - 1 maps back to
    u + 0.5 (up to float error), which rounding would push one level up. uint8 input passes through.
    """
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x
    x = x.astype(np.float32)
    return np.floor(np.clip(x * 127.5 + 128.0, 0, 255)).astype(np.uint8)


def image_grid(images, cols: int | None = None) -> np.ndarray:
    """[N, H, W, C] float in [-1, 1] (or uint8) -> one uint8 [rows*H, cols*W, C] image, row-major, black padding.

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


def table_grid(table) -> np.ndarray:
    """[rows, cols, H, W, C] images (float or uint8) -> one uint8 picture with that row/column layout."""
    table = np.asarray(table)
    if table.ndim != 5:
        raise ValueError(f"table_grid needs [rows, cols, H, W, C] images, got shape {table.shape}")
    rows, cols = table.shape[:2]
    return image_grid(table.reshape(rows * cols, *table.shape[2:]), cols=cols)


def upscale(image: np.ndarray, scale: int = 1) -> np.ndarray:
    """[..., H, W, C] -> [..., H * scale, W * scale, C]: each pixel a scale x scale block (nearest neighbour,
    no new detail: a 32x32 sample stays a 32x32 sample, large enough to look at)."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    image = np.asarray(image)
    return image if scale == 1 else np.repeat(np.repeat(image, scale, axis=-3), scale, axis=-2)


def save_png(image: np.ndarray, path: str, scale: int = 1):
    """Write a uint8 HWC image (C = 1 or 3) as PNG, `scale` times larger (upscale), creating the parent
    directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image = upscale(image, scale)
    PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def save_image_grid(images, path: str, cols: int | None = None, scale: int = 1):
    save_png(image_grid(images, cols), path, scale)


# ---------------------------------------------------------------------------------------- attention maps


def latent_palette(num_latents: int) -> np.ndarray:
    """[T, 3] uint8, one distinct saturated colour per latent component: hues spread evenly around the wheel,
    visited with a stride so that neighbouring latent indices get far-apart hues."""
    if num_latents < 1:
        raise ValueError(f"latent_palette needs at least one latent, got {num_latents}")
    stride = next(s for s in (7, 5, 3, 2, 1) if math.gcd(s, num_latents) == 1 and s < max(num_latents, 2))
    hues = [(i * stride % num_latents) / num_latents for i in range(num_latents)]
    colours = np.array([colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hues]) * 255
    return np.rint(colours).astype(np.uint8)


def attention_owners(attn) -> np.ndarray:
    """attn [B, T, layers, heads, H, W] (the generator's return_attention maps) -> int [B, layers, H, W]:
    at each position, the latent component with the most attention (maps averaged over heads)."""
    attn = np.asarray(attn)
    if attn.ndim != 6:
        raise ValueError(f"attention maps must be [B, T, layers, heads, H, W], got shape {attn.shape}")
    if attn.shape[1] < 1 or attn.shape[2] < 1:
        raise ValueError(f"attention maps {attn.shape} have no latents or no layers: the model has no attention")
    return np.argmax(attn.mean(axis=3), axis=1)


def attention_segmentation(attn) -> np.ndarray:
    """attn [B, T, layers, heads, H, W] -> uint8 [B, layers, H, W, 3]: each position painted in the colour
    (latent_palette) of the latent that owns it."""
    return latent_palette(np.shape(attn)[1])[attention_owners(attn)]


def attention_overlays(images, attn, alpha: float = 0.6) -> np.ndarray:
    """Segmentation colours blended over the images -> uint8 [B, 1 + layers, R, R, 3]: column 0 is the image,
    column 1 + l its blend with layer l's segmentation (alpha = weight of the colours; 1 = colours only).
    The maps are upsampled (nearest) to the image size when they are smaller."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    images = to_uint8(images)
    seg = attention_segmentation(attn)  # [B, L, H, W, 3]
    b, r = images.shape[0], images.shape[1]
    if seg.shape[0] != b:
        raise ValueError(f"{b} images but attention maps for {seg.shape[0]}")
    h = seg.shape[2]
    if r % h:
        raise ValueError(f"attention maps of size {h} do not divide the image size {r}")
    seg = upscale(seg, r // h)
    blend = (1.0 - alpha) * images[:, None].astype(np.float32) + alpha * seg.astype(np.float32)
    blend = np.rint(blend).astype(np.uint8)
    return np.concatenate([images[:, None], blend], axis=1)


def attention_overlay_grid(images, attn, alpha: float = 0.6) -> np.ndarray:
    """One picture: rows = samples, columns = the image then one overlay per attention layer."""
    return table_grid(attention_overlays(images, attn, alpha))


# ---------------------------------------------------------------------------------------------- animation


def save_gif(frames, path: str, fps: float = 12.0, scale: int = 1):
    """[F, H, W, C] float in [-1, 1] (or uint8) -> an endlessly looping animated GIF, `fps` frames a second,
    `scale` times larger (upscale).

    PIL stores identical consecutive frames once with their durations added (same animation, fewer frames)."""
    frames = upscale(to_uint8(frames), scale)
    if frames.ndim != 4 or len(frames) < 1:
        raise ValueError(f"save_gif needs [F, H, W, C] frames, got shape {frames.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pictures = [PIL.Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=max(1, round(1000 / fps)), loop=0)
