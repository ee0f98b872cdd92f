"""The hardware table: Cloud TPU slice names, and the CPU's theoretical peak from /proc/cpuinfo against a
measured matmul."""

import os

import pytest

from ganjax import hardware
from ganjax.bench import peaks


def test_slice_names_count_cores_on_v4_and_v5p_and_chips_on_v5e_and_v6e():
    s = hardware.tpu_slice("v5p-64")
    assert (s.chips, s.topology_name) == (32, "v5p:2x4x4")
    assert hardware.tpu_slice("v4-8").topology_name == "v4:2x2x1"
    assert (hardware.tpu_slice("v5e-8").chips, hardware.tpu_slice("v5e-8").topology) == (8, "2x4")
    assert hardware.tpu_slice("v5litepod-256").topology_name == "v5e:16x16"  # gcloud's name for v5e
    assert hardware.tpu_slice("v6e-256").chips == 256
    assert hardware.tpu_slice("v5p-1024").chips == 512
    for bad in ("v5p-6", "v5e-3", "v7-8", "tpu"):
        with pytest.raises(ValueError, match=r"unknown TPU slice .*known: v4-8, v4-16"):
            hardware.tpu_slice(bad)


# /proc/cpuinfo excerpts (one processor block each; the parser counts distinct physical cores).
def _cpuinfo(model, vendor, family, flags, mhz, cores=2):
    return "\n\n".join(
        f"processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel name\t: {model}\n"
        f"cpu MHz\t\t: {mhz}\nphysical id\t: 0\ncore id\t\t: {i}\nflags\t\t: {flags}" for i in range(cores))


ZEN3 = _cpuinfo("AMD EPYC", "AuthenticAMD", 25, "fpu sse sse2 avx fma avx2", 2445.404)
ZEN4 = _cpuinfo("AMD EPYC 9R14", "AuthenticAMD", 25, "avx fma avx2 avx512f avx512_bf16", 3500.0)
XEON = _cpuinfo("Intel Xeon Platinum", "GenuineIntel", 6, "avx fma avx2 avx512f", 3000.0, cores=4)


@pytest.mark.parametrize("text, gflops, bf16_gflops", [
    (ZEN3, 2 * 2.445404 * 32, 2 * 2.445404 * 32),  # two 256-bit FMA pipes; no bf16 dot products
    (ZEN4, 2 * 3.5 * 32, 2 * 3.5 * 64),  # AVX-512 on two 256-bit pipes; avx512_bf16 doubles it
    (XEON, 4 * 3.0 * 64, 4 * 3.0 * 64),
])
def test_theoretical_peak_is_cores_times_clock_times_flops_per_cycle(text, gflops, bf16_gflops):
    peak = hardware.parse_cpu_peak(text)
    assert peak.flops("float32") == pytest.approx(gflops * 1e9)
    assert peak.flops("bfloat16") == pytest.approx(bf16_gflops * 1e9)
    assert hardware.parse_cpu_peak(text, usable_cpus={0}).cores == 1  # only the CPUs this process may use
    assert "FLOP/cycle" in peak.describe()


def test_smt_siblings_share_a_core():
    text = ZEN3.replace("core id\t\t: 1", "core id\t\t: 0")  # two hardware threads of one core
    assert hardware.parse_cpu_peak(text).cores == 1


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo on this OS")
def test_the_matmul_probe_stays_under_this_cpus_theoretical_peak():
    out = peaks.cpu_peaks("float32")
    probe, theory = out["probe"][0], out["theoretical"][0]
    assert "error" not in out and out["mfu_peak"] == out["probe"]
    if hardware.cpu_peak().max_clock:
        assert 0.1 * theory < probe <= 1.02 * theory, (out["probe"][1], out["theoretical"][1])
    else:  # a VM's nominal clock: the cores may boost above it, to a clock some x86 part reaches
        assert 0.1 * theory < probe <= 1.02 * theory * peaks.MAX_BOOST_GHZ / hardware.cpu_peak().ghz
        assert ("note" in out) == (probe > 1.02 * theory)


def test_a_probe_above_a_nominal_clock_peak_is_a_boost_unless_the_clock_is_impossible(monkeypatch):
    zen3 = hardware.parse_cpu_peak(ZEN3)  # 2 cores x 2.445 GHz x 32, nominal (no cpufreq in the text)
    assert not zen3.max_clock
    monkeypatch.setattr(hardware, "cpu_peak", lambda: zen3)
    monkeypatch.setattr(peaks, "cpu_peak_flops", lambda dtype: 2 * 3.5e9 * 32)  # a 3.5 GHz boost
    out = peaks.cpu_peaks("float32")
    assert "error" not in out and "3.5 GHz" in out["note"] and out["mfu_peak"] == out["probe"]
    monkeypatch.setattr(peaks, "cpu_peak_flops", lambda dtype: 2 * 7.0e9 * 32)  # 7 GHz: FLOP/cycle is wrong
    out = peaks.cpu_peaks("float32")
    assert "error" in out and out["mfu_peak"] == out["theoretical"]


def test_a_probe_above_the_theoretical_peak_is_an_error_and_not_used(monkeypatch):
    monkeypatch.setattr(peaks, "cpu_peak_flops", lambda dtype: 1e15)
    monkeypatch.setattr(hardware, "cpu_peak", lambda: hardware.parse_cpu_peak(ZEN3))
    out = peaks.cpu_peaks("float32")
    assert "above this CPU's theoretical peak" in out["error"]
    assert out["mfu_peak"] == out["theoretical"] and out["theoretical"][0] == pytest.approx(2 * 2.445404 * 32e9)
