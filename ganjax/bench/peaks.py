"""Peak dense FLOP/s and interconnect bandwidth per device type, with their sources.

MFU divides achieved model FLOP/s by the peak of the math the step actually uses:
- TPU: XLA's default matmul precision runs float32 dots as one bf16 pass on the MXU, so the float32 peak
  equals the bf16 peak (pass precision='highest' and the real fp32 rate is several times lower).
- NVIDIA (A100, H100, H200): JAX's default precision lets float32 dots/convs use TF32 tensor cores, so the
  float32 entry is the dense TF32 peak; the strict FP32 (CUDA core) peak is given as fp32_strict.
- CPU: no datasheet peak; `cpu_peak_flops()` measures a large float32 matmul on this machine instead.

Bandwidths (`link_bytes_per_s`) are the per-device, one-direction bytes/s available to a ring collective
(see scaling.py for how they are used). For TPUs: the pod's all-reduce bandwidth / chips where Google
publishes it (v4, v5e, v6e), otherwise half the bidirectional per-chip ICI figure (v5p). For GPUs: NVLink
one-direction bandwidth inside an 8-GPU node and the per-GPU InfiniBand NIC between nodes.
"""

import dataclasses
import functools
import time


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    name: str
    bf16: float  # dense FLOP/s
    fp32: float  # dense FLOP/s of float32 math at JAX's default precision (see module doc)
    hbm_bytes: float
    link_bytes_per_s: float  # one direction, per device, inside the fast domain (ICI / NVLink)
    node_size: int  # devices per fast domain (TPU: the whole slice; GPU: NVLink node)
    inter_node_bytes_per_s: float  # one direction, per device, between nodes (GPU: IB NIC); TPU: same as link
    collective_latency_s: float  # per step of a collective algorithm (alpha term)
    source: str
    fp32_strict: float | None = None


TB = 1e12
GB = 1e9
PEAKS = {
    "v4": DevicePeak(
        "TPU v4", 275 * TB, 275 * TB, 32 * 2**30, 1.1e15 / 4096, 4096, 1.1e15 / 4096, 2e-6,
        "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM, all-reduce bandwidth 1.1 PB/s per 4096-chip pod",
    ),
    "v5e": DevicePeak(
        "TPU v5e", 197 * TB, 197 * TB, 16 * GB, 51.2e12 / 256, 256, 51.2e12 / 256, 2e-6,
        "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM, all-reduce bandwidth 51.2 TB/s per 256-chip pod",
    ),
    "v5p": DevicePeak(
        "TPU v5p", 459 * TB, 459 * TB, 95 * 2**30, 1200 * GB / 2, 8960, 1200 * GB / 2, 2e-6,
        "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM, 1200 GB/s bidirectional ICI per chip",
    ),
    "v6e": DevicePeak(
        "TPU v6e", 918 * TB, 918 * TB, 32 * GB, 102.4e12 / 256, 256, 102.4e12 / 256, 2e-6,
        "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM, all-reduce bandwidth 102.4 TB/s per 256-chip pod",
    ),
    "a100": DevicePeak(
        "NVIDIA A100 SXM 80GB", 312 * TB, 156 * TB, 80 * GB, 300 * GB, 8, 25 * GB, 5e-6,
        "NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense, 156 TF32 dense, 19.5 FP32; NVLink3 600 GB/s bidirectional; "
        "one HDR 200 Gb/s NIC per GPU (DGX A100)",
        fp32_strict=19.5 * TB,
    ),
    "h100": DevicePeak(
        "NVIDIA H100 SXM", 989 * TB, 494.5 * TB, 80 * GB, 450 * GB, 8, 50 * GB, 5e-6,
        "NVIDIA H100 datasheet: 989 TFLOP/s bf16 dense, 494.5 TF32 dense, 67 FP32; NVLink4 900 GB/s bidirectional; "
        "one NDR 400 Gb/s NIC per GPU (DGX H100)",
        fp32_strict=67 * TB,
    ),
    "h200": DevicePeak(
        "NVIDIA H200 SXM", 989 * TB, 494.5 * TB, 141 * GB, 450 * GB, 8, 50 * GB, 5e-6,
        "NVIDIA H200 datasheet: same tensor-core peaks as H100, 141 GB HBM3e; NVLink4 900 GB/s bidirectional; "
        "one NDR 400 Gb/s NIC per GPU",
        fp32_strict=67 * TB,
    ),
}

# Substrings of jax's device_kind that identify a table entry.
_KIND_KEYS = (("v6", "v6e"), ("v5p", "v5p"), ("v5 lite", "v5e"), ("v5e", "v5e"), ("v4", "v4"),
              ("a100", "a100"), ("h100", "h100"), ("h200", "h200"))


def lookup(name: str) -> DevicePeak:
    key = name.lower()
    if key not in PEAKS:
        raise ValueError(f"bench.device: unknown device {name!r}; known: {', '.join(sorted(PEAKS))}, cpu")
    return PEAKS[key]


def key_for_device(device) -> str | None:
    """Table key for a jax Device, or None for CPUs and unknown accelerators."""
    kind = device.device_kind.lower()
    for sub, key in _KIND_KEYS:
        if sub in kind:
            return key
    return None


@functools.lru_cache(maxsize=None)
def cpu_peak_flops(dtype: str = "float32", n: int = 1024, repeats: int = 30) -> float:
    """Best FLOP/s of an n x n matmul on the local CPU (all its cores, as XLA uses them).

    Best of many short runs (~10 ms each): on a shared machine a few of 5 were all slowed, which
    halved the peak and doubled the MFU (a cpu_medium bench reported 103%). 16-bit dtypes are probed as the
    models multiply them: float32 accumulation (ganjax.nn.precision), the CPU's bf16 dot-product path."""
    import jax
    import jax.numpy as jnp

    from ganjax.nn import precision

    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), dtype), cpu)
    f = jax.jit(lambda x: precision.einsum("ij,jk->ik", x, x))
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device_key: str | None, compute_dtype: str) -> tuple[float, str]:
    """(peak FLOP/s, description) for MFU; device_key None means the local CPU, measured."""
    if device_key is None:
        return cpu_peak_flops(compute_dtype), f"CPU {compute_dtype} matmul probe (1024^3, best of 30)"
    p = lookup(device_key)
    if compute_dtype == "bfloat16":
        return p.bf16, f"{p.name} bf16 dense"
    return p.fp32, f"{p.name} float32 at default precision ({'TF32' if p.fp32_strict else 'one bf16 pass'})"
