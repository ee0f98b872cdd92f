"""A study's report (`ganjax report`): FID against training compute (log scale), wall time and kimg, one
curve per run; the compute-optimal frontier across runs; a power law per group drawn over its points; the
numbers as CSV and markdown, and one HTML page holding them all. Runs of different FID protocols are never
drawn in one panel: each protocol gets its own (with a warning), and its frontier and fits are its own.
"""

import html
import itertools
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ganjax import sweep  # noqa: E402
from ganjax.study import law  # noqa: E402

AXES = {  # x axis of each figure: (point key, label, log scale)
    "compute": ("pflops", "training compute (PFLOPs, analytic)", True),
    "wall": ("wall_hours", "wall time (hours, compiles included)", False),
    "kimg": ("kimg", "thousands of real images seen (kimg)", False),
}
POINT_COLUMNS = ("run", "group", "status", "protocol", "hardware", "step", "kimg", "pflops", "wall_hours", "fid")


def analyse(runs) -> dict:
    """Per protocol: its runs, the frontier across them and a fit per group. {protocol: {...}}"""
    out = {}
    for run in runs:
        out.setdefault(run.protocol, {"runs": []})["runs"].append(run)
    for panel in out.values():
        pts = [(p["pflops"], p["fid"], r.name) for r in panel["runs"] for p in r.points]
        panel["frontier"] = law.frontier([p for p in pts if np.isfinite(p[0])])
        groups = {}
        for r in panel["runs"]:
            groups.setdefault(r.group, []).extend(p for p in r.points if np.isfinite(p["pflops"]))
        panel["fits"] = {g: law.fit_power_law([p["pflops"] for p in ps], [p["fid"] for p in ps])
                         for g, ps in groups.items() if ps}
    return out


def _panels(analysis, title):
    n = len(analysis)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.6), squeeze=False)
    fig.suptitle(title, fontsize=10)
    return fig, axes[0]


def _hardware(runs) -> str:
    return "; ".join(sorted({r.hardware for r in runs}))


def plot(analysis, axis: str, path: str):
    key, xlabel, log = AXES[axis]
    fig, axes = _panels(analysis, f"FID against {xlabel.split(' (')[0]}")
    for ax, (proto, panel) in zip(axes, analysis.items()):
        groups = sorted({r.group for r in panel["runs"]})
        colours = dict(zip(groups, itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])))
        markers = itertools.cycle("osD^vP*X")
        for r in panel["runs"]:
            pts = [(p[key], p["fid"]) for p in r.points if np.isfinite(p[key])]
            if not pts:
                continue
            x, y = zip(*pts)
            style = "-" if r.status == "finished" else ":"
            ax.plot(x, y, style, marker=next(markers), color=colours[r.group], label=f"{r.name} ({r.status})",
                    alpha=0.85)
        if axis == "compute":
            if panel["frontier"]:
                fx, fy, _ = zip(*panel["frontier"])
                ax.step(fx, fy, where="post", color="black", lw=2.2, alpha=0.4, label="frontier (best so far)")
            for g, fit in panel["fits"].items():
                xs = [p["pflops"] for r in panel["runs"] if r.group == g for p in r.points]
                if fit.ok or np.isfinite(fit.a):
                    grid = np.geomspace(min(xs), max(xs), 100)
                    ax.plot(grid, fit(grid), "--", color=colours[g], lw=1.2,
                            label=f"{g}: {fit.a:.3g} C^-{fit.b:.2g} + {fit.c:.3g}" + ("" if fit.ok else " (bad fit)"))
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID")
        ax.set_title(f"{proto}\n{_hardware(panel['runs'])}", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(v):
    return "" if isinstance(v, float) and not np.isfinite(v) else v


def point_rows(analysis):
    for proto, panel in analysis.items():
        for r in panel["runs"]:
            for p in r.points:
                yield {"run": r.name, "group": r.group, "status": r.status, "protocol": proto,
                       "hardware": r.hardware, **p}


def run_rows(analysis):
    for proto, panel in analysis.items():
        for r in panel["runs"]:
            fids = [p["fid"] for p in r.points]
            last = r.points[-1] if r.points else {}
            yield {"run": r.name, "group": r.group, "status": r.status, "protocol": proto,
                   "steps": r.last_step, "evaluations": len(fids), "best FID": min(fids) if fids else "",
                   "last FID": fids[-1] if fids else "", "PFLOPs at last FID": last.get("pflops", ""),
                   "note": "" if fids else "no FID records (eval off, or stopped before its first evaluation)"}


def frontier_rows(analysis):
    for proto, panel in analysis.items():
        for compute, fid, run in panel["frontier"]:
            yield {"protocol": proto, "pflops": compute, "best FID": fid, "run": run}


def fit_rows(analysis):
    for proto, panel in analysis.items():
        for g, f in panel["fits"].items():
            yield {"protocol": proto, "group": g, "a": f.a, "a_err": f.a_err, "b": f.b, "b_err": f.b_err,
                   "c": f.c, "c_err": f.c_err, "rms_residual": f.rms_residual, "points": f.points,
                   "verdict": "ok" if f.ok else f"bad fit: {f.problem}"}


def _finite_rows(rows):
    """Rows with NaN / inf cells blank, as the tables show them."""
    return [{k: _finite(v) for k, v in r.items()} for r in rows]


def _columns(rows):
    return list(rows[0]) if rows else []


def markdown_table(rows) -> str:
    rows = _finite_rows(rows)
    return sweep.markdown_table(_columns(rows), rows) if rows else "(none)\n"


def _html_table(rows) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(sweep.cell(_finite(r.get(c, '')))))}</td>"
                                    for c in cols) + "</tr>" for r in rows)
    return f"<table border=1 cellspacing=0 cellpadding=3><tr>{head}</tr>{body}</table>"


def write_report(analysis, out: str, warnings=()) -> dict:
    """Every output of the report of `analysis` (analyse(runs)) into `out` (created); returns {name: path}."""
    runs = [r for panel in analysis.values() for r in panel["runs"]]
    os.makedirs(out, exist_ok=True)
    paths = {f"fid_vs_{axis}": plot(analysis, axis, os.path.join(out, f"fid_vs_{axis}.png")) for axis in AXES}
    tables = {"runs": list(run_rows(analysis)), "frontier": list(frontier_rows(analysis)),
              "fits": list(fit_rows(analysis))}
    paths["points.csv"] = os.path.join(out, "points.csv")
    sweep.write_csv(paths["points.csv"], POINT_COLUMNS, _finite_rows(point_rows(analysis)))
    for name, rows in tables.items():
        paths[f"{name}.csv"] = os.path.join(out, f"{name}.csv")
        sweep.write_csv(paths[f"{name}.csv"], _columns(rows), _finite_rows(rows))
    protocols = list(analysis)
    md = ["# Scaling study", "", f"FID protocols: {'; '.join(protocols)}. Hardware: {_hardware(runs)}.",
          "Compute is the cost meter's analytic training FLOPs (ganjax/train/cost.py) at each evaluation.", ""]
    md += [f"**Warning**: {w}" for w in warnings]
    for name, rows in tables.items():
        md += ["", f"## {name.capitalize()}", "", markdown_table(rows)]
    md += ["", *(f"![{a}](fid_vs_{a}.png)" for a in AXES)]
    paths["report.md"] = os.path.join(out, "report.md")
    with open(paths["report.md"], "w") as f:
        f.write("\n".join(md) + "\n")
    page = ["<html><head><meta charset='utf-8'><title>ganjax scaling study</title></head><body>",
            "<h1>Scaling study</h1>", f"<p>FID protocols: {html.escape('; '.join(protocols))}. "
            f"Hardware: {html.escape(_hardware(runs))}.</p>"]
    page += [f"<p><b>Warning</b>: {html.escape(w)}</p>" for w in warnings]
    page += [f"<img src='fid_vs_{a}.png' style='max-width:100%'>" for a in AXES]
    for name, rows in tables.items():
        page += [f"<h2>{name.capitalize()}</h2>", _html_table(rows)]
    page.append("</body></html>")
    paths["report.html"] = os.path.join(out, "report.html")
    with open(paths["report.html"], "w") as f:
        f.write("\n".join(page))
    return paths
