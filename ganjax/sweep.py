"""Sweeps: lists of config overrides, one training run each, and the table and plot of their results.

A config file may define `get_sweep(arg) -> list[dict]`, each dict mapping dotted field paths to values
(`{'train.lr_g': 0.001, 'model.heads': 2}`); `grid` and `zipped` build such lists. `ganjax sweep` turns
each dict into one `python -m ganjax train` command (see ganjax/commands/sweep.py).
"""

import csv
import itertools
import json
import math
import os
import re
import shlex

# ---------------------------------------------------------------------------------------------
# Building sweeps


def grid(axes):
    """Cartesian product: grid({'a': [1, 2], 'b': ['x', 'y']}) -> 4 dicts, the last key varying fastest."""
    _check_axes(axes)
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def zipped(axes):
    """Values taken together: zipped({'a': [1, 2], 'b': ['x', 'y']}) -> [{a:1,b:x}, {a:2,b:y}]."""
    _check_axes(axes)
    lengths = {k: len(v) for k, v in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zipped: all value lists must have the same length, got {lengths}")
    keys = list(axes)
    return [dict(zip(keys, values)) for values in zip(*(axes[k] for k in keys))]


def _check_axes(axes):
    for key, values in axes.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"sweep axis {key!r}: expected a non-empty list of values, got {values!r}")


# ---------------------------------------------------------------------------------------------
# Overrides <-> configs and command lines


def apply(config, overrides):
    """A copy of `config` with `overrides` ({'train.lr_g': 1e-3}) set; unknown fields raise ValueError."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for path, value in overrides.items():
            *parents, leaf = path.split(".")
            node = config
            for i, key in enumerate(parents):
                if key not in node:
                    raise ValueError(f"sweep override {path!r}: config has no field {'.'.join(parents[:i + 1])!r}")
                node = node[key]
            if leaf not in node:
                raise ValueError(f"sweep override {path!r}: config has no field {path!r}")
            node[leaf] = value  # ConfigDict keeps the field's type (a str for an int field raises)
    return config


def flag_value(value):
    """How config_flags parses a value back: booleans lower-case, floats exact, strings as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def override_flags(overrides):
    return [f"--config.{path}={flag_value(value)}" for path, value in overrides.items()]


def run_name(index, overrides):
    """'003-attention=simplex,heads=2': sortable, readable, and safe as a directory name."""
    parts = [f"{path.rsplit('.', 1)[-1]}={flag_value(v)}" for path, v in overrides.items()]
    name = f"{index:03d}" + ("-" + ",".join(parts) if parts else "")
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)[:200]


def train_command(config_arg, workdir, overrides, python="python"):
    """The argv of one run: `python -m ganjax train --config=FILE:ARG --workdir=DIR --config.x=v ...`."""
    return [python, "-m", "ganjax", "train", f"--config={config_arg}", f"--workdir={workdir}",
            *override_flags(overrides)]


def shell_join(argv):
    return " ".join(shlex.quote(a) for a in argv)


# ---------------------------------------------------------------------------------------------
# Results


def final_metrics(workdir):
    """The latest value of every numeric key in workdir/metrics.jsonl (later records win; evaluation records
    interleaved with training logs are merged, so an FID logged before the last train record survives)."""
    path = os.path.join(workdir, "metrics.jsonl")
    merged = {}
    if not os.path.exists(path):
        return merged
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves a partial last line
            if isinstance(record, dict):
                merged.update(_flatten(record))
    return merged


def _flatten(record, prefix=""):
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value  # numbers only: record labels ("kind": "eval", checkpoint paths) are not metrics
    return out


def collect(runs):
    """runs: [{'name', 'overrides', 'workdir', 'status'}] -> (columns, rows) with swept values then metrics."""
    params = list(dict.fromkeys(k for r in runs for k in r["overrides"]))
    metrics = [final_metrics(r["workdir"]) for r in runs]
    metric_keys = sorted(set().union(*metrics)) if metrics else []
    columns = ["run", "status", *params, *metric_keys]
    rows = []
    for run, m in zip(runs, metrics):
        row = {"run": run["name"], "status": run["status"]}
        row.update({p: run["overrides"].get(p, "") for p in params})
        row.update({k: m.get(k, "") for k in metric_keys})
        rows.append(row)
    return columns, rows


def write_csv(path, columns, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _cell(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def write_markdown(path, columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(path, rows, metric, param, params):
    """metric against the swept `param`, one line per combination of the other swept values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows or metric not in rows[0]:
        available = [c for c in (rows[0] if rows else {}) if c not in ("run", "status", *params)]
        raise ValueError(f"--plot_metric {metric!r} is not among the runs' final metrics {available}")
    if param not in params:
        raise ValueError(f"--plot_param {param!r} is not a swept field; swept: {params}")
    xs_all = list(dict.fromkeys(r[param] for r in rows))
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs_all)
    others = [p for p in params if p != param]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, group in itertools.groupby(sorted(rows, key=lambda r: [str(r[p]) for p in others]),
                                        key=lambda r: tuple(r[p] for p in others)):
        pts = [(r[param], r[metric]) for r in group if isinstance(r[metric], (int, float)) and
               not (isinstance(r[metric], float) and math.isnan(r[metric]))]
        if not pts:
            continue
        if numeric:
            pts.sort()
            x = [p[0] for p in pts]
        else:
            x = [xs_all.index(p[0]) for p in pts]
        label = ", ".join(f"{p.rsplit('.', 1)[-1]}={flag_value(v)}" for p, v in zip(others, key)) or None
        ax.plot(x, [p[1] for p in pts], marker="o", label=label)
    if not numeric:
        ax.set_xticks(range(len(xs_all)), [flag_value(x) for x in xs_all])
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    if others:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
