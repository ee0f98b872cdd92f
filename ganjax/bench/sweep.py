"""`ganjax bench --sweep`: mesh shapes x model sizes x per-device batch sizes -> CSV + plots.

Each point is one bench record (run.bench) on the first `mesh size` devices. Batches are per device, so
moving along the devices axis is weak scaling. On one CPU host the "devices" are virtual and share the
same cores: their img/s per device is not a scaling measurement, but the memory per device and the
communication volume (both read from the compiled programs) are exactly what real devices would hold and
send.
"""

import csv
import json
import os

from ganjax import presets
from ganjax.bench import run

COLUMNS = ("name", "size", "mesh", "devices", "strategy", "batch", "batch_per_device", "iter_median_s",
           "iter_p10_s", "iter_p90_s", "img_per_s", "img_per_s_per_device", "sec_per_kimg",
           "gflop_per_img", "xla_over_analytic", "mfu", "g_params", "d_params", "params_and_opt_mb_per_device",
           "peak_mem_mb_per_device", "comm_mb_per_device_per_iter", "compile_s")


def parse_mesh(text: str) -> dict:
    """'dp=4,fsdp=2,model=1' -> {'data': 4, 'fsdp': 2, 'model': 1} (missing axes are 1)."""
    names = {"dp": "data", "data": "data", "fsdp": "fsdp", "model": "model", "tp": "model"}
    out = {"data": 1, "fsdp": 1, "model": 1}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in names or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--mesh: {part!r} is not axis=N with axis in dp|fsdp|model and N >= 1 (got {text!r})")
        out[names[key]] = int(value)
    return out


def apply_mesh(config, mesh: dict):
    """Set config.parallel for this mesh; the strategy follows the axes (fsdp_tp > fsdp > dp) unless the
    config already asks for shard_map with a pure batch mesh."""
    p = config.parallel
    p.mesh_data, p.mesh_fsdp, p.mesh_model = mesh["data"], mesh["fsdp"], mesh["model"]
    if mesh["model"] > 1:
        p.strategy = "fsdp_tp"
    elif mesh["fsdp"] > 1:
        p.strategy = "fsdp"
    elif p.strategy != "shard_map":
        p.strategy = "dp"
    return config


def mesh_devices(mesh: dict) -> int:
    return mesh["data"] * mesh["fsdp"] * mesh["model"]


def row(rec: dict, size: str) -> dict:
    b, n = rec["batch"], rec["devices"]
    return {
        "name": rec["name"], "size": size, "mesh": ",".join(f"{k}={v}" for k, v in rec["mesh"].items()),
        "devices": n, "strategy": rec["strategy"], "batch": b, "batch_per_device": b / n,
        "iter_median_s": rec["iteration"]["median_s"], "iter_p10_s": rec["iteration"]["p10_s"],
        "iter_p90_s": rec["iteration"]["p90_s"], "img_per_s": rec["img_per_s"],
        "img_per_s_per_device": rec["img_per_s_per_device"], "sec_per_kimg": rec["sec_per_kimg"],
        "gflop_per_img": rec["flops"]["analytic_per_iteration"] / b / 1e9,
        "xla_over_analytic": rec["flops"]["xla_over_analytic"], "mfu": rec["mfu"],
        "g_params": rec["params"]["g"], "d_params": rec["params"]["d"],
        "params_and_opt_mb_per_device": rec["params_and_opt_bytes"] / 2**20,
        "peak_mem_mb_per_device": rec["memory_peak_bytes_per_device"] / 2**20,
        "comm_mb_per_device_per_iter": rec["comm_bytes_per_device_per_iteration"] / 2**20,
        "compile_s": rec["compile_s"],
    }


def sweep(config, meshes: list[str], sizes: list[str], batches_per_device: list[int], out_dir: str, *,
          steps: int, warmup: int, phases: bool = False, log=print) -> list[dict]:
    """Run every combination, append each record to out_dir/sweep.jsonl, write sweep.csv and plots."""
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for size in sizes:
        if size not in presets.SIZES:
            raise ValueError(f"--sweep_sizes: {size!r} is not one of {tuple(presets.SIZES)}")
        for mesh_text in meshes:
            mesh = parse_mesh(mesh_text)
            n = mesh_devices(mesh)
            for bpd in batches_per_device:
                c = presets.apply_size(config.copy_and_resolve_references(), size)
                apply_mesh(c, mesh)
                c.train.batch_size = bpd * n
                rec = run.bench(c, steps=steps, warmup=warmup, phases=phases, num_devices=n)
                rows.append(row(rec, size))
                with open(os.path.join(out_dir, "sweep.jsonl"), "a") as f:
                    f.write(json.dumps(rec) + "\n")
                log(f"sweep size={size} mesh={mesh_text} batch/device={bpd}: "
                    f"{rec['img_per_s']:.3g} img/s, {rec['memory_peak_bytes_per_device'] / 2**20:.1f} MB/device")
    with open(os.path.join(out_dir, "sweep.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    plot(rows, out_dir)
    return rows


def plot(rows: list[dict], out_dir: str) -> list[str]:
    import matplotlib  # deferred: plotting is the only user, and matplotlib takes seconds to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    panels = [("img_per_s_per_device", "img/s per device"), ("peak_mem_mb_per_device", "peak memory / device (MB)"),
              ("comm_mb_per_device_per_iter", "communication / device / iteration (MB)")]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 4))
    series = sorted({(r["size"], r["strategy"], r["batch_per_device"]) for r in rows})
    for ax, (key, label) in zip(axes, panels):
        for size, strategy, bpd in series:
            pts = sorted((r["devices"], r[key]) for r in rows
                         if (r["size"], r["strategy"], r["batch_per_device"]) == (size, strategy, bpd))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{size} {strategy} b/dev={bpd:g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("devices")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    by_size = {}
    for r in rows:
        by_size[r["g_params"] + r["d_params"]] = (r["size"], r["gflop_per_img"])
    pts = sorted(by_size.items())
    ax.plot([p[0] / 1e6 for p in pts], [p[1][1] for p in pts], "o-")
    for params, (size, g) in pts:
        ax.annotate(size, (params / 1e6, g))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("G + D parameters (M)")
    ax.set_ylabel("training GFLOP per image")
    fig.tight_layout()
    path = os.path.join(out_dir, "sweep.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    return paths
