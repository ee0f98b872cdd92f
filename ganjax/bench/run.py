"""One bench record: compile, time and account a config's training iteration on the current devices.

What is timed is the train helper's own jitted iteration variants (ganjax.train.step.make_train_step:
one compiled program per combination of lazy phases, exactly what the loop calls), each executed with
block_until_ready on its output. The amortised iteration weights the variants by how often the loop runs
them (R1 every r1_interval, path length every pl_interval). The per-phase breakdown (G main, D main,
D R1, G PL) jits each phase of the same ganjax.train.step.Iteration on its own (phase + optimizer
update), so the breakdown's sum differs from a whole iteration by what XLA fuses across phases.

The real batch is a fixed random device-resident array: the bench measures the step, not the loader.
"""

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from ganjax.bench import flops as flops_lib
from ganjax.bench import hlo_comm, peaks

PHASES = ("g_main", "d_main", "d_r1", "g_pl")


@dataclasses.dataclass
class Setup:
    config: object
    model_cfg: object
    mesh: object
    G: object
    D: object
    g_opt: object
    d_opt: object
    state: object
    shardings: object
    train_step: object
    reals: object


def build(config, num_devices: int | None = None) -> Setup:
    """Models, mesh (over the first num_devices devices, default all), a fresh sharded state and the
    loop's train step for `config`."""
    from ganjax import parallel
    from ganjax.models import ModelConfig, build_models
    from ganjax.train import state as state_lib
    from ganjax.train.step import make_train_step

    model_cfg = ModelConfig.from_config(config.model)
    model_cfg.validate()
    mesh = parallel.make_mesh(config, jax.devices()[:num_devices] if num_devices else None)
    G, D = build_models(model_cfg)
    g_opt, d_opt = state_lib.make_optimizers(config.train)
    rules = parallel.logical_rules(config)
    state, shardings = state_lib.create_state(G, D, g_opt, d_opt, model_cfg, mesh, rules, config.seed)
    step = make_train_step(config, mesh, G, D, g_opt, d_opt, shardings)
    r = model_cfg.resolution
    shape = (config.train.batch_size, r, r, model_cfg.num_channels)
    reals = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    reals = jax.device_put(reals, parallel.batch_sharding(mesh))
    return Setup(config, model_cfg, mesh, G, D, g_opt, d_opt, state, shardings, step, reals)


def _phase_programs(s: Setup) -> dict:
    """name -> jitted (state, reals) -> state running one phase and its optimizer update."""
    from ganjax.parallel import batch_sharding
    from ganjax.train.step import Iteration

    # The same phase code as the train step, with its fsdp_tp compute layout (ganjax.parallel.compute_sharding).
    tp = s.config.parallel.strategy == "fsdp_tp"
    it = Iteration(s.G, s.D, s.g_opt, s.d_opt, s.train_step.cfg,
                   param_shardings=(s.shardings.g_params, s.shardings.d_params) if tp else None)
    b = s.config.train.batch_size
    z_shape = (b, s.model_cfg.num_latents, s.model_cfg.z_dim)

    def g_main(st, reals, key, z):
        grads, aux = it._g_main(key, z, st.g_params, st.g_buffers, st.d_params)
        p, o = it._update(it.g_opt, st.g_params, st.g_opt_state, grads)
        return st.replace(g_params=p, g_opt_state=o, g_buffers=aux["buffers"])

    def d_main(st, reals, key, z):
        grads, _ = it._d_main(key, z, reals, st.g_params, st.g_buffers, st.d_params)
        p, o = it._update(it.d_opt, st.d_params, st.d_opt_state, grads)
        return st.replace(d_params=p, d_opt_state=o)

    def d_r1(st, reals, key, z):
        grads, _ = it._d_r1(key, reals, st.d_params)
        p, o = it._update(it.d_opt, st.d_params, st.d_opt_state, grads)
        return st.replace(d_params=p, d_opt_state=o)

    def g_pl(st, reals, key, z):
        grads, aux = it._g_pl(key, z, st.g_params, st.g_buffers, st.pl_mean)
        p, o = it._update(it.g_opt, st.g_params, st.g_opt_state, grads)
        return st.replace(g_params=p, g_opt_state=o, pl_mean=aux["pl_mean"])

    fns = {"g_main": g_main, "d_main": d_main}
    if it.cfg.r1_interval > 0:
        fns["d_r1"] = d_r1
    if it.cfg.pl_interval > 0:
        fns["g_pl"] = g_pl
    out = {}
    for name, fn in fns.items():
        def program(st, reals, fn=fn):
            key = jax.random.wrap_key_data(st.rng)
            k_next, k_z, k_phase = jax.random.split(key, 3)
            z = jax.random.normal(k_z, z_shape, jnp.float32)
            new = fn(st, reals, k_phase, z)
            return new.replace(rng=jax.random.key_data(k_next))

        out[name] = jax.jit(program, in_shardings=(s.shardings, batch_sharding(s.mesh)),
                            out_shardings=s.shardings, donate_argnums=0)
    return out


def _compile(fn, *args):
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _time(compiled, state, reals, steps: int, warmup: int, returns_metrics: bool):
    """Runs the compiled program warmup + steps times, threading the (donated) state through."""
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = compiled(state, reals)
        jax.block_until_ready(out)
        dt = time.perf_counter() - t0
        state = out[0] if returns_metrics else out
        if i >= warmup:
            times.append(dt)
    return times, state


def _spread(times) -> dict:
    q = np.percentile(times, [10, 50, 90]) if times else [math.nan] * 3
    return {"median_s": float(q[1]), "p10_s": float(q[0]), "p90_s": float(q[2]), "n": len(times)}


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
            "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
            "peak_bytes": int(peak)}


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


def variant_weights(step_cfg) -> dict[tuple[bool, bool], float]:
    """Fraction of loop iterations that run each (R1, PL) variant, over one full period of both."""
    period = math.lcm(max(step_cfg.r1_interval, 1), max(step_cfg.pl_interval, 1))
    counts: dict[tuple[bool, bool], int] = {}
    for s in range(period):
        v = step_cfg.phases_at(s)
        counts[v] = counts.get(v, 0) + 1
    return {v: c / period for v, c in counts.items()}


def _variant_name(v) -> str:
    return "plain" if v == (False, False) else "+".join(n for n, on in zip(("r1", "pl"), v) if on)


def bench(config, *, steps: int = 10, warmup: int = 2, phases: bool = True, device_key=None,
          num_devices: int | None = None) -> dict:
    """Compile, time and account one config; returns a JSON-serialisable record.

    device_key: the peaks-table entry for MFU (None: detected from the devices; CPUs use a matmul probe).
    """
    s = build(config, num_devices)
    n_dev = s.mesh.size
    platform = s.mesh.devices.flat[0].platform
    if device_key is None and platform != "cpu":
        device_key = peaks.key_for_device(s.mesh.devices.flat[0])
    cfg = s.train_step.cfg
    weights = variant_weights(cfg)
    rec = {"name": config.name, "devices": n_dev, "platform": platform,
           "device_kind": s.mesh.devices.flat[0].device_kind,
           "mesh": dict(s.mesh.shape), "strategy": config.parallel.strategy,
           "batch": config.train.batch_size, "resolution": s.model_cfg.resolution,
           "compute_dtype": s.model_cfg.compute_dtype, "variants": {}, "phases": {}}

    state = s.state
    xla_flops_iter, comm_iter, peak_mem, compile_total = 0.0, 0.0, 0, 0.0
    amort = {"median_s": 0.0, "p10_s": 0.0, "p90_s": 0.0}
    for v, w in sorted(weights.items()):
        fn = s.train_step.variant(*v)
        compiled, ct = _compile(fn, state, s.reals)
        times, state = _time(compiled, state, s.reals, steps, warmup, returns_metrics=True)
        comm = hlo_comm.compiled_comm(compiled, n_dev)
        ca = compiled.cost_analysis() or {}
        mem = _memory(compiled)
        sp = _spread(times)
        rec["variants"][_variant_name(v)] = {
            "weight": w, "compile_s": ct, **sp, "xla_flops_per_device": float(ca.get("flops", math.nan)),
            "comm_bytes_per_device": comm["total_ring_bytes"], "comm": comm["by_kind"],
            "collectives": comm["count"], "memory": mem}
        for k in amort:
            amort[k] += w * sp[k]
        xla_flops_iter += w * float(ca.get("flops", math.nan)) * n_dev
        comm_iter += w * comm["total_ring_bytes"]
        peak_mem = max(peak_mem, mem.get("peak_bytes", 0))
        compile_total += ct

    if phases:
        for name, fn in _phase_programs(s).items():
            compiled, ct = _compile(fn, state, s.reals)
            times, state = _time(compiled, state, s.reals, steps, warmup, returns_metrics=False)
            comm = hlo_comm.compiled_comm(compiled, n_dev)
            ca = compiled.cost_analysis() or {}
            rec["phases"][name] = {"compile_s": ct, **_spread(times),
                                   "xla_flops": float(ca.get("flops", math.nan)) * n_dev,
                                   "comm_bytes_per_device": comm["total_ring_bytes"],
                                   "memory": _memory(compiled)}

    b = config.train.batch_size
    analytic = flops_lib.iteration_flops(s.model_cfg, config.train, b)
    mf = flops_lib.model_flops(s.model_cfg)
    per_img = flops_lib.phase_flops_per_image(s.model_cfg, config.train)
    for name in rec["phases"]:
        rec["phases"][name]["analytic_flops"] = analytic[name]
    t = amort["median_s"]
    peak, peak_desc = peaks.peak_flops(device_key, s.model_cfg.compute_dtype)
    machine_peak = peak if device_key is None else peak * n_dev  # a CPU probe already covers all cores
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
        "memory_peak_bytes_per_device": peak_mem,
        **state_bytes_per_device(state),
        "comm_bytes_per_device_per_iteration": comm_iter,
    })
    return rec


def markdown_table(records: list[dict]) -> str:
    head = ("| config | devices | mesh | batch | iter s (p10-p90) | img/s | img/s/dev | sec/kimg | GFLOP/img "
            "| MFU | peak mem/dev MB | comm/dev/iter MB | compile s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        it = r["iteration"]
        mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items())
        lines.append(
            f"| {r['name']} | {r['devices']} | {mesh} | {r['batch']} | {it['median_s']:.4g} "
            f"({it['p10_s']:.3g}-{it['p90_s']:.3g}) | {r['img_per_s']:.3g} | {r['img_per_s_per_device']:.3g} "
            f"| {r['sec_per_kimg']:.4g} | {r['flops']['analytic_per_iteration'] / r['batch'] / 1e9:.3g} "
            f"| {100 * r['mfu']:.1f}% | {r['memory_peak_bytes_per_device'] / 2**20:.1f} "
            f"| {r['comm_bytes_per_device_per_iteration'] / 2**20:.2f} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


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
    from ganjax import parallel
    from ganjax.models import ModelConfig, build_models
    from ganjax.train import state as state_lib
    from ganjax.train.step import make_train_step

    model_cfg = ModelConfig.from_config(config.model)
    mesh = parallel.make_mesh(config, jax.devices()[:num_devices] if num_devices else None)
    G, D = build_models(model_cfg)
    g_opt, d_opt = state_lib.make_optimizers(config.train)
    boxed, shardings = state_lib.abstract_state(G, D, g_opt, d_opt, model_cfg, mesh, parallel.logical_rules(config))
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            state_lib.unbox(boxed), shardings)
    r = model_cfg.resolution
    reals = jax.ShapeDtypeStruct((config.train.batch_size, r, r, model_cfg.num_channels), jnp.float32,
                                 sharding=parallel.batch_sharding(mesh))
    step = make_train_step(config, mesh, G, D, g_opt, d_opt, shardings)
    out = {}
    for v, w in sorted(variant_weights(step.cfg).items()):
        out[_variant_name(v)] = (w, step.variant(*v).lower(abstract, reals).compile())
    return out
