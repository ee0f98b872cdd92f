"""GANsformer's image preprocessing: crop to an aspect ratio, pad to a square, resize to a power of two.

The reference stores every dataset as padded squares: crop the largest centred rectangle of height/width
`aspect_ratio` (1.0 = the largest centred square), pad it with black to a square (so wide scenes such as
CLEVR or LSUN bedrooms keep their content), then resize to the model resolution with Lanczos (PIL
antialiases when it shrinks). Grayscale, palette and alpha images become RGB; transparency is composited
over black, the colour of the padding.
"""

import io

import numpy as np
import PIL.Image


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        black = PIL.Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return PIL.Image.alpha_composite(black, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: keep the top 8 bits
        arr = np.asarray(img, np.uint32 if img.mode == "I" else np.uint16)
        return PIL.Image.fromarray((arr >> 8).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def crop_to_aspect(img: PIL.Image.Image, aspect_ratio: float) -> PIL.Image.Image:
    """The largest centred rectangle with height / width = aspect_ratio."""
    w, h = img.size
    cw = min(w, h / aspect_ratio)
    ch = cw * aspect_ratio
    cw, ch = max(1, int(round(cw))), max(1, int(round(ch)))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def pad_to_square(img: PIL.Image.Image) -> PIL.Image.Image:
    w, h = img.size
    if w == h:
        return img
    s = max(w, h)
    out = PIL.Image.new("RGB", (s, s), (0, 0, 0))
    out.paste(img, ((s - w) // 2, (s - h) // 2))
    return out


def preprocess(img: PIL.Image.Image, resolution: int, aspect_ratio: float = 1.0) -> np.ndarray:
    """Any PIL image -> uint8 [resolution, resolution, 3]."""
    img = pad_to_square(crop_to_aspect(to_rgb(img), aspect_ratio))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
    return np.asarray(img, np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 HWC -> PNG bytes, for TFDS Image features (TFDS would encode numpy arrays with TensorFlow)."""
    buf = io.BytesIO()
    PIL.Image.fromarray(image).save(buf, format="png", compress_level=1)
    return buf.getvalue()
