"""Every hardware constant ganjax uses, each with its source: accelerator peaks, memory, bandwidths, the
Cloud TPU slice names, and the theoretical float32 peak of the local CPU read from /proc/cpuinfo.

Conventions:
- Peaks are dense FLOP/s per device (a device is one chip; a v4 or v5p chip runs its two TensorCores as
  one "megacore" device). MFU divides achieved model FLOP/s by the peak of the math the step uses:
  - TPU: XLA's default matmul precision runs float32 dots as one bf16 pass on the MXU, so `fp32` equals
    the bf16 peak (precision='highest' is several times slower).
  - NVIDIA: JAX's default precision lets float32 dots/convs use TF32 tensor cores, so `fp32` is the dense
    TF32 peak; `fp32_strict` is the CUDA-core FP32 peak.
- `link_bytes_per_s`: per device, one direction, inside the fast domain (TPU: ICI across the slice,
  half the bidirectional per-chip figure, which for v4/v5e/v6e equals the pod's all-reduce bandwidth /
  chips; GPU: NVLink inside an 8-GPU node). `inter_node_bytes_per_s`: per device, one direction, between
  domains (TPU: data-center network between slices; GPU: the per-GPU InfiniBand NIC).
- `hbm_bytes`: as the vendor states it, read as binary units for TPUs: Cloud TPU's "16 GB" (v5e) and "32 GB"
  (v6e) are GiB, since libtpu's compiler lets one program use 15.75 and 31.25 GiB of them (more than 16e9
  and 32e9 bytes); v4 32 GiB (30.75 usable), v5p 95 GiB (95.74 usable: the part has 96 GiB). The compiler's
  own out-of-memory verdict (ganjax plan) is authoritative, since part of HBM is reserved by the runtime.
"""

import dataclasses
import functools
import os
import re

TB = 1e12
GB = 1e9
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    bf16: float  # dense FLOP/s
    fp32: float  # dense FLOP/s of float32 math at JAX's default precision (see module doc)
    hbm_bytes: float
    hbm_bytes_per_s: float
    link_bytes_per_s: float  # one direction, per device, inside the fast domain (ICI / NVLink)
    node_size: int  # devices per fast domain (TPU: the whole pod; GPU: NVLink node)
    inter_node_bytes_per_s: float  # one direction, per device, between domains (TPU: DCN; GPU: IB NIC)
    collective_latency_s: float  # per step of a collective algorithm (alpha term; an assumption)
    source: str
    fp32_strict: float | None = None
    # Cloud TPU slices: how the accelerator type counts ('cores': v4-8 is 4 chips of 2 TensorCores;
    # 'chips': v5e-8 is 8 chips), and the libtpu topology family and chip configuration.
    slice_unit: str | None = None
    topology_dims: int = 0
    chip_config: str = "default"


ACCELERATORS = {
    "v4": Accelerator(
        "TPU v4", 275 * TB, 275 * TB, 32 * GIB, 1200 * GB, 1.1e15 / 4096, 4096, 1.1e15 / 4096, 2e-6,
        "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, HBM2 32 GiB at 1200 GBps, all-reduce bandwidth "
        "1.1 PB/s per 4096-chip pod (ICI spans the pod, so no DCN term)",
        slice_unit="cores", topology_dims=3, chip_config="megacore"),
    "v5e": Accelerator(
        "TPU v5e", 197 * TB, 197 * TB, 16 * GIB, 819 * GB, 400 * GB / 2, 256, 2 * 100e9 / 8 / 8, 2e-6,
        "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, HBM2 16 GB at 819 GBps, bidirectional ICI 400 GBps "
        "per chip (all-reduce 51.2 TB/s per 256-chip pod), 2 x 100 Gbps NICs per 8-chip host (DCN)",
        slice_unit="chips", topology_dims=2),
    "v5p": Accelerator(
        "TPU v5p", 459 * TB, 459 * TB, 96 * GIB, 2765 * GB, 1200 * GB / 2, 8960, 50e9 / 8, 2e-6,
        "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, HBM2e 95 GiB at 2765 GBps, bidirectional ICI "
        "1200 GBps per chip, DCN 50 Gbps per chip",
        slice_unit="cores", topology_dims=3, chip_config="megacore"),
    "v6e": Accelerator(
        "TPU v6e", 918 * TB, 918 * TB, 32 * GIB, 1638 * GB, 800 * GB / 2, 256, 2 * 100e9 / 8 / 8, 2e-6,
        "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, HBM 32 GB at 1638 GBps, bidirectional ICI 800 GBps "
        "per chip (all-reduce 102.4 TB/s per 256-chip pod); DCN assumed as v5e's per-host NICs (no v6e figure)",
        slice_unit="chips", topology_dims=2),
    "a100": Accelerator(
        "NVIDIA A100 SXM 80GB", 312 * TB, 156 * TB, 80 * GB, 2039 * GB, 300 * GB, 8, 25 * GB, 5e-6,
        "NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense, 156 TF32 dense, 19.5 FP32, HBM2e 80 GB at 2039 GB/s; "
        "NVLink3 600 GB/s bidirectional; one HDR 200 Gb/s NIC per GPU (DGX A100)",
        fp32_strict=19.5 * TB),
    "h100": Accelerator(
        "NVIDIA H100 SXM", 989 * TB, 494.5 * TB, 80 * GB, 3350 * GB, 450 * GB, 8, 50 * GB, 5e-6,
        "NVIDIA H100 datasheet: 989 TFLOP/s bf16 dense, 494.5 TF32 dense, 67 FP32, HBM3 80 GB at 3.35 TB/s; "
        "NVLink4 900 GB/s bidirectional; one NDR 400 Gb/s NIC per GPU (DGX H100)",
        fp32_strict=67 * TB),
    "h200": Accelerator(
        "NVIDIA H200 SXM", 989 * TB, 494.5 * TB, 141 * GB, 4800 * GB, 450 * GB, 8, 50 * GB, 5e-6,
        "NVIDIA H200 datasheet: same tensor-core peaks as H100, HBM3e 141 GB at 4.8 TB/s; NVLink4 900 GB/s "
        "bidirectional; one NDR 400 Gb/s NIC per GPU",
        fp32_strict=67 * TB),
}

# Substrings of jax's device_kind that identify a table entry.
_KIND_KEYS = (("v6", "v6e"), ("v5p", "v5p"), ("v5 lite", "v5e"), ("v5e", "v5e"), ("v5", "v5p"), ("v4", "v4"),
              ("a100", "a100"), ("h100", "h100"), ("h200", "h200"))


def lookup(name: str) -> Accelerator:
    key = name.lower()
    if key not in ACCELERATORS:
        raise ValueError(f"unknown device {name!r}; known: {', '.join(sorted(ACCELERATORS))}, cpu")
    return ACCELERATORS[key]


def key_for_device(device) -> str | None:
    """Table key for a jax Device, or None for CPUs and unknown accelerators."""
    kind = device.device_kind.lower()
    for sub, key in _KIND_KEYS:
        if sub in kind:
            return key
    return None


def peak_flops(key: str, compute_dtype: str) -> float:
    a = lookup(key)
    return a.bf16 if compute_dtype == "bfloat16" else a.fp32


# ------------------------------------------------------------------------------------------------------
# Cloud TPU slices ("v5p-64", "v5e-8"): chips and the libtpu topology of each accelerator type.

# Slice shapes Cloud TPU offers (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e: "Topology | Chips" tables).
TOPOLOGIES = {
    2: {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
    3: {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
        512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"},
}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    name: str  # the accelerator type, e.g. v5p-64
    generation: str  # table key, e.g. v5p
    chips: int
    topology: str  # e.g. 2x4x4

    @property
    def accelerator(self) -> Accelerator:
        return ACCELERATORS[self.generation]

    @property
    def topology_name(self) -> str:
        """libtpu's name for it, e.g. 'v5p:2x4x4'."""
        return f"{self.generation}:{self.topology}"


def tpu_slice_names() -> list[str]:
    out = []
    for gen, a in ACCELERATORS.items():
        if a.slice_unit:
            per = 2 if a.slice_unit == "cores" else 1
            out += [f"{gen}-{chips * per}" for chips in TOPOLOGIES[a.topology_dims]]
    return out


def tpu_slice(name: str) -> TpuSlice:
    """'v5p-64' -> 32 chips in a 2x4x4 torus (v4 and v5p count TensorCores, v5e and v6e chips)."""
    m = re.fullmatch(r"(v4|v5e|v5p|v6e|v5litepod)-(\d+)", name.strip().lower())
    if m:
        gen = "v5e" if m.group(1) == "v5litepod" else m.group(1)
        a = ACCELERATORS[gen]
        count = int(m.group(2))
        per = 2 if a.slice_unit == "cores" else 1
        topo = TOPOLOGIES[a.topology_dims].get(count // per) if count % per == 0 else None
        if topo:
            return TpuSlice(f"{gen}-{count}", gen, count // per, topo)
    raise ValueError(f"--tpu: unknown TPU slice {name!r}; known: {', '.join(tpu_slice_names())}")


# ------------------------------------------------------------------------------------------------------
# The local CPU's theoretical peak, from the machine itself.


@dataclasses.dataclass(frozen=True)
class CpuPeak:
    cores: int
    ghz: float
    flops_per_cycle: int  # float32, per core
    bf16_flops_per_cycle: int  # bf16 dot products accumulating in float32, per core (0: no such instructions)
    isa: str
    model: str
    basis: str  # how flops_per_cycle was derived
    max_clock: bool = True  # ghz is the maximum clock (cpufreq); False: the kernel's 'cpu MHz', which under a
    # hypervisor (no cpufreq) is the nominal clock, and the cores may boost above it

    def implied_ghz(self, flops: float, compute_dtype: str = "float32") -> float:
        """The clock at which `flops` would be this CPU's peak."""
        return flops / self.flops(compute_dtype) * self.ghz

    def flops(self, compute_dtype: str = "float32") -> float:
        per = self.bf16_flops_per_cycle if compute_dtype == "bfloat16" and self.bf16_flops_per_cycle else \
            self.flops_per_cycle
        return self.cores * self.ghz * 1e9 * per

    def describe(self, compute_dtype: str = "float32") -> str:
        per = self.bf16_flops_per_cycle if compute_dtype == "bfloat16" and self.bf16_flops_per_cycle else \
            self.flops_per_cycle
        clock = "GHz" if self.max_clock else "GHz (nominal)"
        return (f"{self.model}: {self.cores} cores x {self.ghz:.3g} {clock} x {per} {compute_dtype} FLOP/cycle "
                f"({self.isa}; {self.basis}) = {self.flops(compute_dtype) / 1e9:.4g} GFLOP/s")


def _cpuinfo_blocks(text: str) -> list[dict]:
    blocks = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip()] = value.strip()
        if entry:
            blocks.append(entry)
    return blocks


def parse_cpu_peak(cpuinfo: str, usable_cpus: set[int] | None = None, max_mhz: float | None = None) -> CpuPeak:
    """The theoretical float32 peak from /proc/cpuinfo text (x86).

    FLOP/cycle per core = FMA pipes x vector lanes x 2. The flags give the vector width (avx512f, avx2 +
    fma); the number of FMA pipes is not in the flags, so it comes from the vendor and family: AMD Zen 2-4
    (family 23, 25) have two 256-bit FMA pipes (Zen 4 runs AVX-512 as two 256-bit halves), so 32; Zen 5
    (family 26) has two 512-bit pipes, 64; Intel with AVX-512 is taken as two 512-bit FMA units (Xeon
    Gold/Platinum; some parts have one), 64; other AVX2 + FMA parts 32; AVX without FMA 16. bf16 dot
    products (avx512_bf16: a pair of products summed per float32 lane) double the float32 rate.
    Cores: distinct physical cores among the CPUs this process may use (SMT siblings share FMA units).
    Clock: max_mhz when known (cpufreq), else the 'cpu MHz' the kernel reports (max_clock False): in a VM
    that is the nominal clock (a Zen 5 VM here reports 2596 MHz and runs its matmuls at ~3.65 GHz).
    """
    blocks = [b for b in _cpuinfo_blocks(cpuinfo) if "processor" in b]
    if not blocks:
        raise ValueError("/proc/cpuinfo has no processor entries")
    if usable_cpus is not None:
        blocks = [b for b in blocks if int(b["processor"]) in usable_cpus] or blocks
    first = blocks[0]
    flags = set(first.get("flags", "").split())
    vendor = first.get("vendor_id", "")
    family = int(first.get("cpu family", "0") or 0)
    cores = len({(b.get("physical id", "0"), b.get("core id", b["processor"])) for b in blocks})
    mhz = max_mhz or max(float(b.get("cpu MHz", "0") or 0) for b in blocks)
    if mhz <= 0:
        raise ValueError("/proc/cpuinfo gives no clock ('cpu MHz')")
    if "avx512f" in flags:
        isa = "AVX-512"
        if vendor == "AuthenticAMD" and family < 26:
            per, basis = 32, f"AMD family {family}: two 256-bit FMA pipes"
        else:
            per, basis = 64, ("AMD family 26: two 512-bit FMA pipes" if vendor == "AuthenticAMD"
                              else "assumed two 512-bit FMA units")
    elif "avx2" in flags and "fma" in flags:
        isa, per, basis = "AVX2+FMA", 32, "two 256-bit FMA pipes"
    elif "avx" in flags:
        isa, per, basis = "AVX", 16, "one 256-bit add and one 256-bit multiply pipe"
    else:
        isa, per, basis = "SSE", 8, "one 128-bit add and one 128-bit multiply pipe"
    bf16 = 2 * per if "avx512_bf16" in flags else 0
    return CpuPeak(cores, mhz / 1000, per, bf16, isa, first.get("model name", "unknown CPU"), basis,
                   max_clock=max_mhz is not None)


@functools.cache
def cpu_peak() -> CpuPeak | None:
    """This machine's CpuPeak, or None where /proc/cpuinfo is not there (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    max_mhz = None
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            max_mhz = int(f.read().strip()) / 1000
    except (OSError, ValueError):
        pass
    return parse_cpu_peak(text, set(os.sched_getaffinity(0)), max_mhz)


def describe_devices(devices) -> str:
    """One line naming the devices a run holds, for reports: '8 x TPU v5p', or for CPU devices the host's CPU
    ('8 x cpu on AMD EPYC (AVX-512, 2 cores)'), since virtual CPU devices share its cores."""
    kind = devices[0].device_kind
    line = f"{len(devices)} x {kind}"
    if devices[0].platform == "cpu":
        peak = cpu_peak()
        if peak is not None:
            line += f" on {peak.model} ({peak.isa}, {peak.cores} cores)"
    return line
