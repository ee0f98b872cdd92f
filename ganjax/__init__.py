"""ganjax: GANsformer and StyleGAN2 in JAX/Flax."""

import glob
import importlib.util
import os
from importlib import metadata

__version__ = "0.1.0"

_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def _cpu_convolutions_on_eigen():
    """Let XLA:CPU run convolutions with Eigen instead of YNNPACK (jaxlib 0.10), before JAX starts.

    Eigen ran the models' convolutions and the Inception network clearly faster on the development CPUs
    (numbers: docs/measurements.md). Only XLA:CPU reads the flag. Skipped when XLA_FLAGS already sets it (the user's choice wins),
    for other jaxlib versions (the flag is experimental), and without effect if JAX's backends are
    already running when ganjax is first imported.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    try:
        jaxlib_version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return
    if _YNN_FLAG in flags or not jaxlib_version.startswith("0.10."):
        return
    os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG}=-individual_convolution".strip()


_cpu_convolutions_on_eigen()


def _no_tpu_backend_without_tpu_chips():
    """Keep JAX from starting its TPU backend on a host that has libtpu installed but no TPU chips.

    libtpu is installed on CPU hosts to compile for TPU slices (`ganjax plan`); JAX would then try a TPU
    backend at start-up, print a screen of libtpu warnings and fall back to the CPU. Without TPU device
    files (/dev/accel* on v4/v5e, /dev/vfio/N on v5p/v6e) and without a user's JAX_PLATFORMS, the TPU is
    left out: the platforms become 'cuda,cpu' where JAX's CUDA plugin is installed, else 'cpu'.
    """
    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return
    cuda = any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13))
    os.environ["JAX_PLATFORMS"] = "cuda,cpu" if cuda else "cpu"


_no_tpu_backend_without_tpu_chips()
