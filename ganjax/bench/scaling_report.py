"""`ganjax bench --scaling --device KEY`: the weak-scaling report of a config (see scaling.py for the
model). Per-device compute comes from the analytic FLOPs of an amortised iteration at
config.bench.batch_per_device images per device; communication from the compiled iteration variants on
8 devices (config.bench.comm = 'hlo': the TPU compiler's program for an 8-chip slice where the target is a
TPU and libtpu is installed, else 8 virtual CPU devices) or from the parameter counts ('analytic')."""

import time

from ganjax import hardware
from ganjax.bench import hlo_comm, peaks, scaling
from ganjax.bench import run
from ganjax.bench.sweep import apply_mesh
from ganjax.models import ModelConfig
from ganjax.models.flops import model_flops
from ganjax.plan import tpu
from ganjax.train import cost
from ganjax.train.recipe import recipe

N0 = 8  # devices the HLO is compiled for


def comm_ops(config, strategy: str, model_cfg, device_key: str | None = None, log=print) -> tuple[list, str]:
    b = config.bench
    if b.comm == "analytic":
        mf = model_flops(model_cfg)
        return (scaling.analytic_ops(strategy, mf.g_params, mf.d_params, recipe(config.train)),
                "analytic: per phase one fp32 gradient all-reduce (dp) / parameter all-gathers + gradient "
                "reduce-scatter (fsdp), from the parameter counts")
    t0 = time.perf_counter()
    if tpu_slice_for(device_key) and tpu.libtpu_missing_reason() is None:
        # The TPU compiler's own program for an 8-chip slice of the target (ganjax plan), not CPU HLO.
        from ganjax.plan import compile as plan_compile  # deferred: imports the models and libtpu's compiler

        slice_name = tpu_slice_for(device_key)
        c = plan_compile.configure(config, slice_name, strategy=strategy, batch_per_chip=b.batch_per_device)
        _, compiled = plan_compile.compile_plan(c, slice_name, phases=False, sample=False)
        ops = []
        for prog in compiled:
            if prog.oom:
                raise ValueError(f"bench --scaling: {config.name} does not fit {slice_name} at "
                                 f"{b.batch_per_device} images per chip ({prog.oom['message']})")
            ops += scaling.comm_ops_from_hlo(prog.collectives, prog.weight)
            log(f"scaling: {strategy} variant {prog.name} on {slice_name}: {len(prog.collectives)} collectives")
        return ops, (f"hlo: collectives of the iteration variants compiled by the TPU compiler for {slice_name} "
                     f"({strategy}, in {time.perf_counter() - t0:.0f} s), weighted by how often each variant runs")
    c = config.copy_and_resolve_references()
    apply_mesh(c, {"data": N0 if strategy == "dp" else 1, "fsdp": N0 if strategy == "fsdp" else 1, "model": 1})
    c.train.batch_size = b.batch_per_device * N0
    ops = []
    for name, (weight, compiled) in run.compile_variants(c, N0).items():
        cs = hlo_comm.compiled_comm(compiled, N0)["collectives"]
        ops += scaling.comm_ops_from_hlo(cs, weight)
        log(f"scaling: {strategy} variant {name}: {len(cs)} collectives")
    return ops, (f"hlo: collectives of the compiled iteration variants on {N0} virtual CPU devices "
                 f"({strategy}={N0}, compiled in {time.perf_counter() - t0:.0f} s), weighted by how often "
                 f"each variant runs")


def tpu_slice_for(device_key: str | None) -> str | None:
    """The N0-chip slice of a TPU generation ('v5p' -> 'v5p-16'), None for other devices."""
    a = hardware.ACCELERATORS.get(device_key or "")
    if a is None or not a.slice_unit:
        return None
    return f"{device_key}-{N0 * (2 if a.slice_unit == 'cores' else 1)}"


def report(config, device_key: str, log=print) -> str:
    model_cfg = ModelConfig.from_config(config.model)
    p = peaks.lookup(device_key)
    b = config.bench
    bpd = b.batch_per_device
    it = cost.iteration_flops(model_cfg, config.train, bpd)
    peak, peak_desc = peaks.peak_flops(device_key, model_cfg.compute_dtype)
    if b.measured_step_s > 0:
        compute_s = b.measured_step_s
        compute_note = f"measured amortised iteration on {p.name}: {compute_s:.4g} s (bench.measured_step_s)"
    else:
        compute_s = it["iteration"] / (peak * b.assume_mfu)
        compute_note = (f"not measured on {p.name}: {it['iteration'] / 1e12:.4g} TFLOP per device per amortised "
                        f"iteration / ({peak_desc} {peak / 1e12:.4g} TFLOP/s x assumed MFU {b.assume_mfu})")
    counts = tuple(int(x) for x in b.scaling_devices.split(",") if x.strip())
    mf = model_flops(model_cfg)
    state_bytes = 4 * (4 * mf.g_params + 3 * mf.d_params)  # G, G_ema, 2 Adam moments; D, 2 moments (fp32)
    rows, notes = {}, []
    for strategy in [s.strip() for s in b.scaling_strategies.split(",") if s.strip()]:
        ops, note = comm_ops(config, strategy, model_cfg, device_key, log)
        notes.append(f"{strategy} communication {note}; per iteration at {N0} devices: "
                     f"{sum(o.weight * scaling._ring_bytes(o, N0) for o in ops) / 1e6:.1f} MB sent per device "
                     f"in {sum(o.weight for o in ops):.3g} collectives")
        rows[strategy] = scaling.estimate(ops, compute_s, device_key, counts)
    assumptions = [
        f"config {config.name}: {model_cfg.resolution}^2, G {mf.g_params:,} + D {mf.d_params:,} parameters, "
        f"compute dtype {model_cfg.compute_dtype}, gradients and parameters communicated in float32",
        f"weak scaling at {bpd} images per device; one amortised iteration = G main + D main, plus R1 every "
        f"{config.train.r1_interval} and path length every {config.train.pl_interval} when on "
        f"({it['iteration'] / bpd / 1e9:.4g} GFLOP per image, analytic)",
        f"per-device compute: {compute_note}",
        f"device {p.name}: {p.source}",
        f"fast domain: {p.node_size} devices at {p.link_bytes_per_s / 1e9:.4g} GB/s per device one way; between "
        f"domains {p.inter_node_bytes_per_s / 1e9:.4g} GB/s per device (ganjax/hardware.py)",
        f"latency {p.collective_latency_s * 1e6:.3g} us x 2 log2(n) per collective",
        *notes,
        f"parameters + Adam state per device: dp {state_bytes / 1e9:.3g} GB at every n; fsdp "
        f"{state_bytes / 1e9:.3g} GB / n (activations not included)",
        "not modelled: stragglers, input pipeline, host overhead, fsdp tensors that n does not divide "
        "(ganjax replicates those), network contention beyond the per-device bandwidths above",
    ]
    return scaling.markdown(f"Weak-scaling estimate: {config.name} on {p.name}", rows, assumptions)
