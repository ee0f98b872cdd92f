"""Plans as text, and the two searches over plans: the largest per-chip batch that fits (a few compiles, see
max_batch) and a sweep of slices x strategies x model sizes (CSV, markdown, plots)."""

import csv
import json
import math
import os

from ganjax import presets
from ganjax.plan import compile as compile_lib

GIB = 2**30


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def markdown(rec: dict) -> str:
    chip = rec["chip"]
    mesh = ",".join(f"{k}={v}" for k, v in rec["mesh"].items())
    lines = [f"# Plan: {rec['name']} on {rec['slice']} ({rec['chips']} x {chip['name']}, {rec['topology']})", "",
             f"strategy {rec['strategy']}, mesh {mesh}, global batch {rec['batch']} ({rec['batch_per_chip']:g} per "
             f"chip), {rec['resolution']}^2, compute {rec['compute_dtype']}, remat {rec['remat']}; "
             f"G {rec['params']['g']:,} + D {rec['params']['d']:,} parameters", "",
             f"**HBM per chip: {rec['verdict']}.**", ""]
    st = rec["state_per_chip"]
    lines += [f"State per chip: params (G, G_ema, D) {st['params_bytes'] / GIB:.3f} GiB, Adam state "
              f"{st['opt_state_bytes'] / GIB:.3f} GiB, batch {st['batch_bytes'] / GIB:.3f} GiB; usable HBM "
              f"{chip['usable_hbm_bytes'] / GIB:.2f} GiB (the TPU compiler's figure; datasheet "
              f"{chip['hbm_bytes'] / GIB:.2f} GiB)", "",
              "| program | runs/iter | compile s | args GiB | temp GiB | code MiB | HBM GiB | TFLOP (XLA) "
              "| TFLOP (analytic) | GB accessed | comm MB (by kind) | compute | HBM | comm | roofline | bound "
              "| optimal_seconds |",
              "|" + "---|" * 17]
    for name, p in rec["programs"].items():
        if "oom" in p:
            o = p["oom"]
            need = o.get("required_bytes", math.nan) / GIB
            lines.append(f"| {name} | {p['weight']:.4g} | {p['compile_s']:.1f} | | | | refused: needs {need:.2f} "
                         f"of {o.get('available_bytes', math.nan) / GIB:.2f} | | | | | | | | | | |")
            continue
        mem, r = p["memory"], p["roofline"]
        comm = ", ".join(f"{k} {v['ring_bytes'] / 1e6:.3g}" for k, v in p["comm"].items()) or "-"
        analytic = f"{p['analytic_flops'] / 1e12:.4g}" if "analytic_flops" in p else ""
        compile_s = f"{p['compile_s']:.1f}" + (" (cached)" if p.get("cached") else "")
        lines.append(
            f"| {name} | {p['weight']:.4g} | {compile_s} | {mem['argument_bytes'] / GIB:.3f} | "
            f"{mem['temp_bytes'] / GIB:.3f} | {mem['code_bytes'] / 2**20:.1f} | {mem['hbm_bytes'] / GIB:.3f} | "
            f"{p['flops'] / 1e12:.4g} | {analytic} | {p['bytes_accessed'] / 1e9:.4g} | {comm} | "
            f"{_ms(r['compute_s'])} | {_ms(r['hbm_s'])} | {_ms(r['comm_s'])} | {_ms(r['step_s'])} | {r['bound']} | "
            f"{_ms(p['optimal_seconds'])} |")
    it = rec.get("iteration")
    if it:
        lines += ["", f"**Amortised iteration (roofline, per chip): {_ms(it['step_s'])}, bound by {it['bound']}** "
                  f"(compute {_ms(it['compute_s'])}, HBM {_ms(it['hbm_s'])}, interconnect {_ms(it['comm_s'])}; "
                  f"the compiler's optimal_seconds {_ms(it['optimal_seconds'])}); communication "
                  f"{100 * it['comm_share']:.1f}% of the roofline step.",
                  f"Ceilings: {it['img_per_s_per_chip']:.4g} img/s per chip ({it['img_per_s_per_chip'] * rec['chips']:.4g} "
                  f"on the slice), MFU {100 * it['mfu_ceiling']:.1f}% (analytic {it['analytic_flops'] / 1e12:.4g} "
                  f"TFLOP per chip per iteration, XLA {it['flops'] / 1e12:.4g}"
                  + (f"; the analytic count is {100 * (it['analytic_flops'] / it['flops'] - 1):.1f}% above XLA's, "
                     f"so the ceiling stops at 100%" if it["analytic_flops"] > it["flops"] else "") + ").", ""]
        cost = rec["cost"]
        lines.append(f"Cost of {cost['length']}:")
        assumed = f"at MFU {cost['assume_mfu']:g} (assumed"
        assumed += (f"; above this program's roofline ceiling of {100 * it['mfu_ceiling']:.1f}%, so faster than any "
                    "run can go: the roofline line above is the bound)" if cost.get("assumed_beats_roofline") else ")")
        for key, label in (("roofline", "at the roofline"), ("assumed_mfu", assumed)):
            k = cost[key]
            money = (f", {k['cost']:,.0f} at {cost['price_per_chip_hour']:g} per chip-hour" if k["cost"] is not None
                     else " (no price given: --price or config.train.price_per_device_hour)")
            lines.append(f"- {label}: {k['steps']:,} iterations of {_ms(k['step_s'])}, {k['wall_hours']:,.1f} h wall, "
                         f"{k['chip_hours']:,.0f} chip-hours{money}")
    lines += ["", f"Compile time, all programs: {rec['compile_s']:.0f} s on this host. Chip constants: {chip['source']}."]
    return "\n".join(lines) + "\n"


def fits(config, slice_name: str, batch_per_chip: int, strategy: str) -> tuple[bool, dict]:
    """(fits, plan record) of the heaviest iteration variant at this per-chip batch."""
    rec = compile_lib.plan(config, slice_name, strategy=strategy, batch_per_chip=batch_per_chip, phases=False,
                           sample=False, variants="heaviest")
    return rec["memory"]["fits"], rec


def _fit_word(fits: bool, tight: bool) -> str:
    """'fits', 'fits, tight' (roofline.plan_record's memory["tight"]: accepted, but its memory analysis totals
    more than the usable HBM) or 'refused'."""
    return ("fits, tight" if tight else "fits") if fits else "refused"


def max_batch_line(mb: dict) -> str:
    u = mb["usable_gib"]
    tried = ", ".join(f"{b} {_fit_word(f, b in mb['tight'])} ({mb['needed_gib'][b]:.2f})"
                      for b, f in mb["tried"].items())
    return (f"Largest per-chip batch that fits, {mb['strategy']}: {mb['max_batch_per_chip']}; with its memory "
            f"analysis under the usable HBM: {mb['max_batch_with_headroom']} "
            f"({mb['compiles']} compiles, GiB needed of {u:.2f}: {tried}; {mb['rule']})")


def max_batch(config, slice_name: str, strategy: str, *, step: int = 4, limit: int = 4096, start: int | None = None,
              beyond: int = 2, log=print) -> dict:
    """The largest per-chip batch (a multiple of `step`, the minibatch-std group) whose heaviest iteration fits.

    A 256^2 compile takes 8-19 min on a 2-core host, so the search spends few of them. HBM per chip is close to
    affine in the batch (state + batch x activations): from `start` (or `step`) it doubles until two batches
    fit, then compiles where the line through the two nearest the boundary (the largest that fits and the
    smallest refused, or the two largest that fit) reaches the usable HBM, and that guess's neighbour on the
    other side; it bisects where the line does not land strictly inside the bracket. It stops when a fitting
    batch and a refused one are `step` apart. The compiler's memory is not monotone in the batch, though
    (ffhq256 on v5e-8 fsdp: 36 per chip needed 15.64 GiB, 40 needed 14.62), so `beyond` more multiples past
    that refusal are compiled, and the search goes on above any that fits.
    "Fits" is the TPU compiler's verdict (it accepted the program); a batch it accepted whose memory analysis
    totals more than the usable HBM is "tight" (ffhq256 on v5p-8 dp: 372 per chip accepted at 103.66 of 95.74
    GiB), and 'max_batch_with_headroom' is the largest batch tried that fits without being tight.
    {'strategy', 'max_batch_per_chip', 'max_batch_with_headroom', 'tried': {b: fits}, 'tight': [b], 'needed_gib': {b: GiB},
    'usable_gib', 'compiles', 'rule'}."""
    if step < 1 or limit < step or beyond < 0:
        raise ValueError(f"max_batch: step {step}, limit {limit}, beyond {beyond}: need 1 <= step <= limit, beyond >= 0")
    tried: dict[int, bool] = {}
    need: dict[int, float] = {}
    tight: set[int] = set()
    usable = [math.nan]

    def ok(b):
        if b not in tried:
            tried[b], rec = fits(config, slice_name, b, strategy)
            need[b], usable[0] = rec["memory"]["needed_bytes"], rec["memory"]["usable_bytes"]
            if rec["memory"]["tight"]:
                tight.add(b)
            log(f"plan --max_batch {strategy}: {b} per chip "
                f"{_fit_word(tried[b], b in tight).replace('refused', 'does not fit')} "
                f"({need[b] / GIB:.2f} of {usable[0] / GIB:.2f} GiB)")
        return tried[b]

    def line(lo, hi):
        """The multiple of step where the line through lo and hi (or, with no refusal yet, the two largest
        batches that fit) reaches the usable HBM, if it lies strictly between lo and hi."""
        pts = [lo, hi] if lo in tried and hi in tried else sorted(b for b in tried if tried[b])[-2:]
        if len(pts) < 2:
            return None
        b1, b2 = pts
        slope = (need[b2] - need[b1]) / (b2 - b1)
        guess = int((b1 + (usable[0] - need[b1]) / slope) // step) * step if slope > 0 else 0
        return guess if lo < guess < hi else None

    limit = limit // step * step
    lo, hi = 0, limit + step  # lo: the largest batch found to fit (0: none); hi: a refused one above it, or past the limit
    b = min(limit, max(step, int(start or step) // step * step))
    while True:
        while hi - lo > step:
            guessed = False
            if b is None or not lo < b < hi:
                b = line(lo, hi)
                guessed = b is not None
                if not guessed:  # double up to the first refusal, then bisect
                    b = min(2 * lo, limit) if hi > limit and lo else (lo + hi) // (2 * step) * step
            if ok(b):
                lo, b = b, (b + step if guessed else None)  # a guess that fits: is the next multiple refused?
            else:
                hi, b = b, (b - step if guessed else None)
        if not lo or hi > limit:
            break
        found = [c for c in range(hi + step, min(hi + beyond * step, limit) + 1, step) if ok(c)]
        if not found:
            break
        lo, b = max(found), None  # memory fell again past a refusal: search on above it
        hi = min((c for c in tried if not tried[c] and c > lo), default=limit + step)
    return {"strategy": strategy, "max_batch_per_chip": lo,
            "max_batch_with_headroom": max((c for c in tried if tried[c] and c not in tight), default=0),
            "tried": dict(sorted(tried.items())), "tight": sorted(tight),
            "needed_gib": {b: round(need[b] / GIB, 3) for b in sorted(need)},
            "usable_gib": round(usable[0] / GIB, 3), "compiles": len(tried),
            "rule": f"multiples of {step} up to {limit}; {beyond} past the first refusal also tried, as the "
                    "compiler's memory is not monotone in the batch"}


SWEEP_COLUMNS = ("name", "size", "slice", "chips", "strategy", "batch_per_chip", "fits", "hbm_gib_per_chip",
                 "usable_hbm_gib", "comm_mb_per_chip", "roofline_step_s", "bound", "comm_share",
                 "img_per_s_per_chip", "mfu_ceiling", "compile_s")


def sweep_row(rec: dict, size: str) -> dict:
    it = rec.get("iteration", {})
    return {"name": rec["name"], "size": size, "slice": rec["slice"], "chips": rec["chips"],
            "strategy": rec["strategy"], "batch_per_chip": rec["batch_per_chip"], "fits": rec["memory"]["fits"],
            "hbm_gib_per_chip": rec["memory"]["needed_bytes"] / GIB,
            "usable_hbm_gib": rec["memory"]["usable_bytes"] / GIB,
            "comm_mb_per_chip": it.get("comm_bytes", math.nan) / 1e6, "roofline_step_s": it.get("step_s", math.nan),
            "bound": it.get("bound", ""), "comm_share": it.get("comm_share", math.nan),
            "img_per_s_per_chip": it.get("img_per_s_per_chip", math.nan),
            "mfu_ceiling": it.get("mfu_ceiling", math.nan), "compile_s": rec["compile_s"]}


def sweep(config, slices: list[str], strategies: list[str], sizes: list[str], batch_per_chip: int, out_dir: str, *,
          max_batch_search: bool = False, beyond: int = 2, plan_one=None, log=print) -> list[dict]:
    """Every slice x strategy x size: a plan (its iteration variants) per point, appended to
    out_dir/plan_sweep.jsonl; then plan_sweep.csv, plan_sweep.md and plan_sweep.png."""
    os.makedirs(out_dir, exist_ok=True)
    rows, maxes = [], []
    for size in sizes:
        if size not in presets.SIZES:
            raise compile_lib.PlanError(f"--sweep_sizes: {size!r} is not one of {tuple(presets.SIZES)}")
        sized = presets.apply_size(config.copy_and_resolve_references(), size)
        for slice_name in slices:
            for strategy in strategies:
                rec = plan_one(sized, slice_name, strategy, batch_per_chip)
                rows.append(sweep_row(rec, size))
                with open(os.path.join(out_dir, "plan_sweep.jsonl"), "a") as f:
                    f.write(json.dumps(rec) + "\n")
                log(f"plan --sweep size={size} {slice_name} {strategy}: {rec['verdict']}")
                if max_batch_search:
                    mb = max_batch(sized, slice_name, strategy, start=rec["batch_per_chip"], beyond=beyond, log=log)
                    maxes.append({"size": size, "slice": slice_name, "g_plus_d_params": sum(rec["params"].values()),
                                  **mb})
    with open(os.path.join(out_dir, "plan_sweep.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out_dir, "plan_sweep.md"), "w") as f:
        f.write("| " + " | ".join(SWEEP_COLUMNS) + " |\n|" + "---|" * len(SWEEP_COLUMNS) + "\n")
        for r in rows:
            f.write("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k])
                                      for k in SWEEP_COLUMNS) + " |\n")
        if maxes:
            f.write("\n| size | slice | strategy | G+D params | max batch per chip | with headroom |\n"
                    "|---|---|---|---|---|---|\n")
            for m in maxes:
                f.write(f"| {m['size']} | {m['slice']} | {m['strategy']} | {m['g_plus_d_params']:,} | "
                        f"{m['max_batch_per_chip']} | {m['max_batch_with_headroom']} |\n")
    plot(rows, maxes, out_dir)
    return rows


def plot(rows: list[dict], maxes: list[dict], out_dir: str) -> str:
    import matplotlib  # deferred: plotting is the only user, and matplotlib takes seconds to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("hbm_gib_per_chip", "HBM per chip (GiB)"), ("comm_mb_per_chip", "communication per chip per iteration (MB)"),
              ("roofline_step_s", "roofline iteration (s), marker = bound")]
    n = len(panels) + (1 if maxes else 0)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4))
    markers = {"compute": "o", "hbm": "s", "comm": "^", "": "x"}
    series = sorted({(r["size"], r["strategy"], r["slice"].split("-")[0]) for r in rows})
    for ax, (key, label) in zip(axes, panels):
        for size, strategy, gen in series:
            pts = sorted((r["chips"], r[key], r["bound"]) for r in rows
                         if (r["size"], r["strategy"], r["slice"].split("-")[0]) == (size, strategy, gen))
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", label=f"{gen} {size} {strategy}")
            for x, y, b in pts:
                ax.plot([x], [y], markers.get(b, "x") if key == "roofline_step_s" else "o", color=line.get_color())
        if key == "hbm_gib_per_chip":
            for gen in sorted({r["slice"].split("-")[0] for r in rows}):
                usable = next(r["usable_hbm_gib"] for r in rows if r["slice"].startswith(gen + "-"))
                ax.axhline(usable, ls=":", color="grey")
                ax.annotate(f"{gen} usable", (ax.get_xlim()[0], usable), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("chips")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    if maxes:
        ax = axes[-1]
        for slice_name, strategy in sorted({(m["slice"], m["strategy"]) for m in maxes}):
            pts = sorted((m["g_plus_d_params"], m["max_batch_per_chip"]) for m in maxes
                         if (m["slice"], m["strategy"]) == (slice_name, strategy))
            ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], "o-", label=f"{slice_name} {strategy}")
        ax.set_xscale("log")
        ax.set_xlabel("G + D parameters (M)")
        ax.set_ylabel("max batch per chip")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "plan_sweep.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
