"""What the compiled TPU programs say about a run: whether it fits, how fast it can go, what it costs.

Per chip, for each program the loop runs:
- HBM: arguments + outputs - donated (aliased) + temporaries + generated code, against the HBM the TPU
  compiler allows a program (ganjax.plan.compile.usable_hbm_bytes); a program the compiler refused has
  the compiler's own required/available figures.
- Roofline step time: the largest of compute (the compiler's FLOPs / the chip's peak), HBM traffic (the
  compiler's bytes accessed / HBM bandwidth) and interconnect (ring bytes sent by the program's
  collectives, read from its HLO / one-direction ICI bandwidth per chip); each term is shown and the
  largest one named as the bound. It is a lower bound: it assumes the three overlap perfectly and every
  unit runs at its peak. The compiler's own `optimal_seconds` is shown beside it.
- The amortised iteration weights the iteration variants by how often the loop runs them.
- Ceilings implied by the roofline: img/s per chip and MFU (analytic model FLOPs / (roofline time x peak)).
- Cost of the run's length (train.total_kimg or a budget, ganjax/train/length.py): chip-hours (and money at a
  given price per chip-hour) at the roofline rate and at an assumed MFU (bench.assume_mfu).
All chip constants come from ganjax/hardware.py.
"""

import math

import jax
import numpy as np

from ganjax import hardware
from ganjax.models.flops import model_flops
from ganjax.train import cost
from ganjax.train.length import RunLength

TERMS = ("compute", "hbm", "comm")


def roofline(stats: dict, acc: hardware.Accelerator, compute_dtype: str) -> dict:
    """{'compute_s', 'hbm_s', 'comm_s', 'step_s', 'bound'} of one compiled program per chip."""
    peak = acc.bf16 if compute_dtype == "bfloat16" else acc.fp32
    t = {"compute_s": stats["flops"] / peak, "hbm_s": stats["bytes_accessed"] / acc.hbm_bytes_per_s,
         "comm_s": stats["comm_bytes_per_device"] / acc.link_bytes_per_s}
    bound = max(TERMS, key=lambda k: t[f"{k}_s"])
    return {**t, "step_s": t[f"{bound}_s"], "bound": bound}


def state_bytes_per_chip(tr) -> dict:
    """Bytes one chip holds of each part of the (abstract) train state under the trainer's shardings, and
    of the real batch: what the compiled step's argument bytes consist of."""
    state = tr.abstract_state()

    def shard_bytes(tree):
        return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                       for x in jax.tree.leaves(tree)))

    params = shard_bytes((state.g_params, state.g_ema_params, state.d_params))
    opt = shard_bytes((state.g_opt_state, state.d_opt_state))
    other = shard_bytes((state.g_buffers, state.g_ema_buffers, state.step, state.rng, state.pl_mean, state.skips))
    m = tr.model_cfg
    batch = int(tr.config.train.batch_size) * m.resolution ** 2 * m.num_channels * 4 // tr.mesh.size
    return {"params_bytes": params, "opt_state_bytes": opt, "buffers_bytes": other, "batch_bytes": batch,
            "total_bytes": params + opt + other + batch}


def analytic_flops_per_chip(tr) -> dict:
    """Model FLOPs (the layer walk, ganjax/models/flops.py, over the recipe's phases) per chip of each running
    phase and of the amortised iteration."""
    t, n = tr.config.train, tr.mesh.size
    return {name: f / n for name, f in cost.iteration_flops(tr.model_cfg, t, int(t.batch_size)).items()}


def plan_record(tr, slice_name: str, compiled: list, usable_hbm: float, *, assume_mfu: float,
                price_per_chip_hour: float) -> dict:
    """The plan of one config on one slice, JSON-serialisable."""
    c, m = tr.config, tr.model_cfg
    s = hardware.tpu_slice(slice_name)
    acc = s.accelerator
    chips = s.chips
    batch = int(c.train.batch_size)
    peak = hardware.peak_flops(s.generation, m.compute_dtype)
    analytic = analytic_flops_per_chip(tr)
    mf = model_flops(m)
    rec = {"name": c.name, "slice": s.name, "generation": s.generation, "topology": s.topology_name, "chips": chips,
           "strategy": c.parallel.strategy, "mesh": dict(tr.mesh.shape), "batch": batch,
           "batch_per_chip": batch / chips, "resolution": m.resolution, "compute_dtype": m.compute_dtype,
           "remat": m.remat, "params": {"g": mf.g_params, "d": mf.d_params},
           "chip": {"name": acc.name, "peak_flops": peak, "hbm_bytes": acc.hbm_bytes, "usable_hbm_bytes": usable_hbm,
                    "hbm_bytes_per_s": acc.hbm_bytes_per_s, "ici_bytes_per_s": acc.link_bytes_per_s,
                    "source": acc.source},
           "state_per_chip": state_bytes_per_chip(tr), "programs": {}}
    worst_need, refused = 0.0, []
    for p in compiled:
        entry = {"kind": p.kind, "weight": p.weight, "compile_s": p.lower_s + p.compile_s, "cached": p.cached}
        if p.kind == "iteration":
            entry["analytic_flops"] = cost.variant_flops(m, c.train, batch, p.firing) / chips
        elif p.kind == "phase":
            entry["analytic_flops"] = analytic[p.name]
        if p.oom is not None:
            entry["oom"] = p.oom
            refused.append(p.name)
            worst_need = max(worst_need, p.oom.get("required_bytes", math.inf))
        else:
            entry.update(p.stats)
            entry["roofline"] = roofline(p.stats, acc, m.compute_dtype)
            worst_need = max(worst_need, p.stats["memory"]["hbm_bytes"])
        rec["programs"][p.name] = entry
    spare = usable_hbm - worst_need
    # The compiler refuses a program whose allocation exceeds the chip (as the float32 ffhq256 step on v5e
    # was refused); one it accepted fits by its own accounting of what is live at once, even where the memory
    # analysis' totals (temporaries + arguments + code) add up to more (seen on v5e: docs/measurements.md).
    rec["memory"] = {"needed_bytes": worst_need, "usable_bytes": usable_hbm, "spare_bytes": spare,
                     "fits": not refused, "tight": not refused and spare < 0, "refused_by_compiler": refused}
    if refused:
        rec["verdict"] = (f"does not fit: needs {-spare / 2**30:.2f} GiB more per chip "
                          f"({worst_need / 2**30:.2f} GiB of {usable_hbm / 2**30:.2f} GiB)")
    elif spare >= 0:
        rec["verdict"] = f"fits with {spare / 2**30:.2f} GiB to spare"
    else:
        rec["verdict"] = (f"fits by the TPU compiler's own check (it accepted every program), though its memory "
                          f"analysis totals {worst_need / 2**30:.2f} GiB of the {usable_hbm / 2**30:.2f} GiB usable: "
                          f"no headroom to count on")
    iterations = [(n, e) for n, e in rec["programs"].items() if e["kind"] == "iteration"]
    complete = abs(sum(e["weight"] for _, e in iterations) - 1.0) < 1e-9  # every variant the loop runs
    if complete and all("roofline" in e for _, e in iterations):
        it = {f"{k}_s": sum(e["weight"] * e["roofline"][f"{k}_s"] for _, e in iterations) for k in TERMS}
        it["step_s"] = sum(e["weight"] * e["roofline"]["step_s"] for _, e in iterations)
        it["bound"] = max(TERMS, key=lambda k: it[f"{k}_s"])
        it["flops"] = sum(e["weight"] * e["flops"] for _, e in iterations)
        it["bytes_accessed"] = sum(e["weight"] * e["bytes_accessed"] for _, e in iterations)
        it["comm_bytes"] = sum(e["weight"] * e["comm_bytes_per_device"] for _, e in iterations)
        it["optimal_seconds"] = sum(e["weight"] * e["optimal_seconds"] for _, e in iterations)
        it["analytic_flops"] = analytic["iteration"]
        it["comm_share"] = it["comm_s"] / it["step_s"] if it["step_s"] else 0.0
        it["img_per_s_per_chip"] = batch / chips / it["step_s"]
        # MFU counts the analytic (model) FLOPs; the roofline times the compiled program's. Where the analytic
        # count is the larger (the ffhq256 GANsformer step: 3.6%), a compute-bound program would otherwise show
        # a ceiling above 100%.
        it["mfu_ceiling"] = min(1.0, analytic["iteration"] / (it["step_s"] * peak))
        rec["iteration"] = it
        rec["cost"] = run_cost(c, chips, it["step_s"], analytic["iteration"] / (peak * assume_mfu), assume_mfu,
                               price_per_chip_hour)
    rec["compile_s"] = sum(e["compile_s"] for e in rec["programs"].values())
    return rec


def run_cost(config, chips: int, roofline_step_s: float, assumed_step_s: float, assume_mfu: float,
             price_per_chip_hour: float) -> dict:
    """Chip-hours (and money, with a price) of the run's length (ganjax/train/length.py) at two step times:
    a kimg length or a compute budget is a known step count; a device-hours or money budget is the chip
    time itself, in which the step time sets how many iterations fit. An assumed MFU above the roofline's
    ceiling gives a step faster than the roofline, which no run reaches: `assumed_beats_roofline` says so."""
    length = RunLength(config)
    out = {"length": length.describe(), "assume_mfu": assume_mfu, "price_per_chip_hour": price_per_chip_hour or None,
           "assumed_beats_roofline": assumed_step_s < roofline_step_s}
    for key, step_s in (("roofline", roofline_step_s), ("assumed_mfu", assumed_step_s)):
        steps = (length.total_steps if not length.wall_clock
                 else max(1, int(length.budget_seconds / chips / step_s)))
        hours = steps * step_s / 3600
        out[key] = {"step_s": step_s, "steps": steps, "wall_hours": hours, "chip_hours": hours * chips,
                    "cost": hours * chips * price_per_chip_hour if price_per_chip_hour else None}
    return out
