"""One bench record: compile, time and account a config's training iteration on the current devices.

What is timed is built by the trainer's own setup (ganjax.train.setup.build) and its programs
(ganjax.train.programs): the iteration variants the loop calls (one compiled program per combination of
lazy phases), each executed with block_until_ready on its output. The amortised iteration weights the
variants by how often the loop runs them (R1 every r1_interval, path length every pl_interval). The
per-phase breakdown (G main, D main, D R1, G PL) jits each phase of the same iteration code on its own
(phase + optimizer update), so the breakdown's sum differs from a whole iteration by what XLA fuses across
phases.

The real batch is a fixed random device-resident array (with random labels for a conditional model): the
bench measures the step, not the loader.
"""

import math
import time

import jax
import numpy as np

from ganjax import hardware, parallel
from ganjax.bench import compiled as compiled_lib
from ganjax.bench import peaks
from ganjax.models.flops import model_flops
from ganjax.train import cost, programs, setup


def build(config, num_devices: int | None = None):
    """(Training, fresh sharded state, the step's other arguments: a random device-resident real batch and,
    for a conditional model, random labels) for `config` on a mesh over the first num_devices devices
    (default all)."""
    mesh = parallel.make_mesh(config, jax.devices()[:num_devices] if num_devices else None)
    tr = setup.build(config, mesh)
    tr.model_cfg.validate()
    rng = np.random.default_rng(0)
    batch = []
    for arg in programs.batch_args(tr):
        if np.issubdtype(arg.dtype, np.integer):  # labels
            value = rng.integers(0, tr.model_cfg.num_classes, arg.shape).astype(arg.dtype)
        else:
            value = rng.uniform(-1, 1, arg.shape).astype(arg.dtype)
        batch.append(jax.device_put(value, arg.sharding))
    return tr, tr.init_state(), tuple(batch)


def _time(compiled, state, batch, steps: int, warmup: int, returns_metrics: bool):
    """Runs the compiled program warmup + steps times, threading the (donated) state through."""
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = compiled(state, *batch)
        jax.block_until_ready(out)
        dt = time.perf_counter() - t0
        state = out[0] if returns_metrics else out
        if i >= warmup:
            times.append(dt)
    return times, state


def _spread(times) -> dict:
    q = np.percentile(times, [10, 50, 90]) if times else [math.nan] * 3
    return {"median_s": float(q[1]), "p10_s": float(q[0]), "p90_s": float(q[2]), "n": len(times)}


def state_bytes_per_device(state) -> dict:
    """Bytes one device holds of each part of the train state (its own shards)."""
    def per_device(tree):
        total = 0
        for leaf in jax.tree.leaves(tree):
            if hasattr(leaf, "addressable_shards") and leaf.addressable_shards:
                total += leaf.addressable_shards[0].data.nbytes
            else:
                total += int(np.asarray(leaf).nbytes)
        return total

    params = per_device((state.g_params, state.d_params, state.g_ema_params))
    opt = per_device((state.g_opt_state, state.d_opt_state))
    return {"params_bytes": params, "opt_state_bytes": opt, "params_and_opt_bytes": params + opt}


def bench(config, *, steps: int = 10, warmup: int = 2, phases: bool = True, device_key=None,
          num_devices: int | None = None) -> dict:
    """Compile, time and account one config; returns a JSON-serialisable record.

    device_key: the accelerator-table entry for MFU (None: detected from the devices; CPUs use a matmul
    probe and their theoretical peak).
    """
    tr, state, batch = build(config, num_devices)
    mesh = tr.mesh
    n_dev = mesh.size
    device = mesh.devices.flat[0]
    if device_key is None and device.platform != "cpu":
        device_key = hardware.key_for_device(device)
    rec = {"name": config.name, "devices": n_dev, "platform": device.platform, "device_kind": device.device_kind,
           "mesh": dict(mesh.shape), "strategy": config.parallel.strategy,
           "batch": config.train.batch_size, "resolution": tr.model_cfg.resolution,
           "compute_dtype": tr.model_cfg.compute_dtype, "variants": {}, "phases": {}}

    xla_flops_iter, comm_iter, peak_mem, compile_total = 0.0, 0.0, 0, 0.0
    amort = {"median_s": 0.0, "p10_s": 0.0, "p90_s": 0.0}
    for prog in programs.iteration_programs(tr):
        compiled, lower_s, compile_s = prog.compile()
        times, state = _time(compiled, state, batch, steps, warmup, returns_metrics=True)
        st, _ = compiled_lib.stats(compiled, n_dev)
        sp = _spread(times)
        rec["variants"][prog.name] = {
            "weight": prog.weight, "compile_s": lower_s + compile_s, **sp, "xla_flops_per_device": st["flops"],
            "comm_bytes_per_device": st["comm_bytes_per_device"], "comm": st["comm"],
            "collectives": st["collectives"], "memory": st["memory"]}
        for k in amort:
            amort[k] += prog.weight * sp[k]
        xla_flops_iter += prog.weight * st["flops"] * n_dev
        comm_iter += prog.weight * st["comm_bytes_per_device"]
        peak_mem = max(peak_mem, st["memory"].get("peak_bytes", 0))
        compile_total += lower_s + compile_s

    if phases:
        for prog in programs.phase_programs(tr):
            compiled, lower_s, compile_s = prog.compile()
            times, state = _time(compiled, state, batch, steps, warmup, returns_metrics=False)
            st, _ = compiled_lib.stats(compiled, n_dev)
            rec["phases"][prog.name] = {"compile_s": lower_s + compile_s, **_spread(times),
                                        "xla_flops": st["flops"] * n_dev,
                                        "comm_bytes_per_device": st["comm_bytes_per_device"], "memory": st["memory"]}

    b = config.train.batch_size
    analytic = cost.iteration_flops(tr.model_cfg, config.train, b)
    mf = model_flops(tr.model_cfg)
    per_img = cost.phase_flops_per_image(tr.model_cfg, config.train)
    for name in rec["phases"]:
        rec["phases"][name]["analytic_flops"] = analytic[name]
    t = amort["median_s"]
    peak_error = peak_note = None
    if device_key is None:  # a CPU: the probe and the theoretical peak both cover all cores
        cpu = peaks.cpu_peaks(tr.model_cfg.compute_dtype)
        machine_peak, peak_desc = cpu["mfu_peak"]
        theoretical, peak_error, peak_note = cpu.get("theoretical"), cpu.get("error"), cpu.get("note")
    else:
        peak, peak_desc = peaks.peak_flops(device_key, tr.model_cfg.compute_dtype)
        machine_peak, theoretical = peak * n_dev, None
    rec.update({
        "compile_s": compile_total,
        "iteration": amort,
        "img_per_s": b / t,
        "img_per_s_per_device": b / t / n_dev,
        "sec_per_kimg": 1000 * t / b,
        "flops": {"g_fwd_per_img": mf.g, "mapping_fwd_per_img": mf.mapping, "synthesis_fwd_per_img": mf.synthesis,
                  "d_fwd_per_img": mf.d, "d_fwd_bwd_per_img": 3 * mf.d,
                  **{f"{k}_per_img": v for k, v in per_img.items()},
                  "analytic_per_iteration": analytic["iteration"], "xla_per_iteration": xla_flops_iter,
                  "xla_over_analytic": xla_flops_iter / analytic["iteration"]},
        "params": {"g": mf.g_params, "d": mf.d_params},
        "peak_flops": machine_peak, "peak_desc": peak_desc,
        "achieved_flops": analytic["iteration"] / t,
        "mfu": analytic["iteration"] / t / machine_peak,
        **({"theoretical_peak_flops": theoretical[0], "theoretical_peak_desc": theoretical[1],
            "mfu_theoretical": analytic["iteration"] / t / theoretical[0]} if theoretical else {}),
        **({"peak_error": peak_error} if peak_error else {}), **({"peak_note": peak_note} if peak_note else {}),
        "memory_peak_bytes_per_device": peak_mem,
        **state_bytes_per_device(state),
        "comm_bytes_per_device_per_iteration": comm_iter,
    })
    return rec


def markdown_table(records: list[dict]) -> str:
    head = ("| config | devices | mesh | batch | iter s (p10-p90) | img/s | img/s/dev | sec/kimg | GFLOP/img "
            "| MFU (probe / theoretical peak) | peak mem/dev MB | comm/dev/iter MB | compile s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        it = r["iteration"]
        mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items())
        lines.append(
            f"| {r['name']} | {r['devices']} | {mesh} | {r['batch']} | {it['median_s']:.4g} "
            f"({it['p10_s']:.3g}-{it['p90_s']:.3g}) | {r['img_per_s']:.3g} | {r['img_per_s_per_device']:.3g} "
            f"| {r['sec_per_kimg']:.4g} | {r['flops']['analytic_per_iteration'] / r['batch'] / 1e9:.3g} "
            f"| {_mfu_text(r)} | {r['memory_peak_bytes_per_device'] / 2**20:.1f} "
            f"| {r['comm_bytes_per_device_per_iteration'] / 2**20:.2f} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


def _mfu_text(r: dict) -> str:
    text = f"{100 * r['mfu']:.1f}%"
    return text + (f" / {100 * r['mfu_theoretical']:.1f}%" if "mfu_theoretical" in r else "")


def phase_table(record: dict) -> str:
    lines = ["| phase | median s | p10 s | p90 s | analytic GFLOP | XLA GFLOP | comm/dev MB |",
             "|---|---|---|---|---|---|---|"]
    for name, p in record["phases"].items():
        lines.append(f"| {name} | {p['median_s']:.4g} | {p['p10_s']:.4g} | {p['p90_s']:.4g} | "
                     f"{p['analytic_flops'] / 1e9:.3g} | {p['xla_flops'] / 1e9:.3g} | "
                     f"{p['comm_bytes_per_device'] / 2**20:.2f} |")
    for name, v in record["variants"].items():
        lines.append(f"| iteration[{name}] x{v['weight']:.4g} | {v['median_s']:.4g} | {v['p10_s']:.4g} | "
                     f"{v['p90_s']:.4g} | | {v['xla_flops_per_device'] * record['devices'] / 1e9:.3g} | "
                     f"{v['comm_bytes_per_device'] / 2**20:.2f} |")
    return "\n".join(lines)



def compile_variants(config, num_devices: int | None = None) -> dict:
    """Compile (without running or allocating the state) each iteration variant the loop would run;
    returns {variant: (weight, compiled)}. For reading communication and memory of configs too large to
    execute here."""
    mesh = parallel.make_mesh(config, jax.devices()[:num_devices] if num_devices else None)
    tr = setup.build(config, mesh)
    return {prog.name: (prog.weight, prog.compile()[0]) for prog in programs.iteration_programs(tr)}
