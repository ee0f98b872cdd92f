"""The buffers a reference checkpoint stores but ganjax computes, checked against the checkpoint.

ganjax does not load the FIR `resample_kernel`s or the attention layers' `grid_pos` encodings: it
recomputes them (ganjax.nn.resample.setup_filter of [1, 3, 3, 1]; ganjax.nn.position.sinusoidal_grid, the
reference's pos_type 'sinus' with pos_directions_num 2 and pos_dim = w_dim). A snapshot made with another
filter or other positional-encoding settings would convert without error and generate different images
(measured with the authors' code on the clevr32 fixture's generator: a [1, 2, 1] filter moves its images by
up to 55% of their range, a 4-direction grid encoding by 30%), so each stored buffer is compared with
ganjax's value and a difference is an error that names the buffer and the setting. The reference's positional-
encoding options are not recorded anywhere else in a snapshot: this comparison is how they are read.
"""

import re

import numpy as np

from ganjax.convert.unpickle import ConvertError
from ganjax.nn.position import sinusoidal_grid
from ganjax.nn.resample import DEFAULT_FILTER, setup_filter

DERIVED = re.compile(r".*\.(resample_kernel|grid_pos)")
# Trainable position encodings (the reference's pos_type 'trainable' / 'trainable2d') store pos<i> params.
_TRAINABLE_POS = re.compile(r"synthesis\.b\d+\.conv\d\.pos\d+")
# float32 sin/cos/divisions of two implementations agree to ~1e-7 (values in [-1, 1]); the settings tried here
# (a [1, 2, 1] filter, a 4-direction encoding, a flipped layout) differ by O(0.1-1).
TOLERANCE = 1e-4


def expected(name, shape):
    """(ganjax's value of the derived buffer `name` of this shape, what it is)."""
    if name.endswith(".resample_kernel"):
        f = setup_filter(DEFAULT_FILTER)
        return np.outer(f, f).astype(np.float32), (f"the FIR filter {list(map(int, DEFAULT_FILTER))} "
                                                   "(the reference's resample_kernel default)")
    res, res2, dim = shape if len(shape) == 3 else (None, None, None)
    if res is None or res != res2 or dim % 4:
        raise ConvertError(f"{name}: grid_pos of shape {list(shape)} is not a [res, res, dim] sinusoidal encoding "
                           "with dim divisible by 4 (ganjax supports the reference's pos_type 'sinus' with "
                           "pos_directions_num 2)")
    return sinusoidal_grid(res, dim).reshape(res, res, dim), ("the sinusoidal encoding (pos_type 'sinus', "
                                                              "pos_directions_num 2, pos_dim = w_dim)")


def check(tensors: dict, what: str, path: str):
    """Raise ConvertError unless every stored derived buffer equals ganjax's value (and no trainable
    position encoding is present)."""
    for name, value in tensors.items():
        if _TRAINABLE_POS.fullmatch(name):
            raise ConvertError(f"{path}: {what} variable {name!r} is a trainable position encoding (the reference's "
                               "pos_type 'trainable' or 'trainable2d'); ganjax supports pos_type 'sinus' only")
        if not DERIVED.fullmatch(name):
            continue
        value = np.asarray(value, np.float32)
        want, desc = expected(name, value.shape)
        if value.shape != want.shape:
            raise ConvertError(f"{path}: {what} buffer {name!r} has shape {list(value.shape)}, but ganjax computes "
                               f"{desc} with shape {list(want.shape)}")
        gap = float(np.max(np.abs(value - want)))
        if gap > TOLERANCE:
            raise ConvertError(f"{path}: {what} buffer {name!r} differs from {desc}, which ganjax computes instead "
                               f"of loading, by max |diff| {gap:.3g}: the snapshot was made with other settings, "
                               "which ganjax does not support")
