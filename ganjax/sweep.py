"""Sweeps: lists of config overrides, one training run each, and the table and plot of their results.

A config file may define `get_sweep(name=None, config=None) -> list[dict]` (`ganjax sweep --sweep NAME`; config
is the sweep's base config, for sweeps whose values depend on the preset), each dict mapping dotted field
paths to values (`{'train.lr_g': 0.001, 'model.heads': 2}`); `grid` and `zipped` build such lists. Two keys
of a run are not fields: CONFIG_FILE ('stylegan2.py') trains that run from another config file (relative to
the sweep's, same preset), PRESET ({'size': 's'}) sets preset options of the run (over the sweep's).
`ganjax sweep` turns each dict into one `python -m ganjax train` command (see ganjax/commands/sweep.py).
"""

import csv
import itertools
import json
import math
import os
import re
import shlex

from ganjax import presets
from ganjax.models.config import ModelConfig
from ganjax.train.cost import train_flops_per_image

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


def at_equal_compute(config, runs, fractions="0.25,0.5,1"):
    """The runs as a compute-matched study: each trains to the same budget of training compute and is scored
    at the same fractions of it. The budget is config.train.total_pflops when set, else what the sweep's base
    config (its preset's model) spends on its train.total_kimg, so one study definition fits every preset;
    the fractions are config.eval.at_fractions when set."""
    if config is None:
        raise ValueError("a compute-matched sweep needs the sweep's base config (get_sweep(name, config))")
    t = config.train
    budget = float(t.total_pflops) or (
        float(t.total_kimg) * 1000 * train_flops_per_image(ModelConfig.from_config(config.model), t) / 1e15)
    common = {"train.total_kimg": 0.0, "train.total_pflops": budget, "train.total_device_hours": 0.0,
              "train.total_cost": 0.0, "eval.every_kimg": 0.0, "eval.every_pflops": 0.0,
              "eval.at_fractions": config.eval.at_fractions or fractions}
    return [{**common, **run} for run in runs]


def varying(runs):
    """Each run's overrides that differ between the runs (what names a run)."""
    keys = [k for k in dict.fromkeys(k for r in runs for k in r)
            if any(k not in r for r in runs) or len({repr(r[k]) for r in runs}) > 1]
    return [{k: r[k] for k in keys if k in r} for r in runs]


def _check_axes(axes):
    for key, values in axes.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"sweep axis {key!r}: expected a non-empty list of values, got {values!r}")


CONFIG_FILE, PRESET = "config_file", "preset"  # the run keys that choose its config, not a field of it


def shown(path, value):
    """A run's value as tables and names show it: CONFIG_FILE by its stem, PRESET as 'size=s', a field's as is."""
    if path == CONFIG_FILE:
        return os.path.splitext(os.path.basename(value))[0]
    if path == PRESET:
        return ",".join(f"{k}={v}" for k, v in value.items())
    return value


def fields(overrides) -> dict:
    """The run's config-field overrides (its CONFIG_FILE and PRESET keys taken out)."""
    return {k: v for k, v in overrides.items() if k not in (CONFIG_FILE, PRESET)}


def run_config_arg(config_arg, overrides) -> str:
    """The FILE:PRESET of one run: the sweep's, with the run's CONFIG_FILE (beside the sweep's file) and
    PRESET options applied."""
    path, _, arg = config_arg.partition(":")
    if CONFIG_FILE in overrides:
        path = os.path.join(os.path.dirname(path), overrides[CONFIG_FILE])
    if PRESET in overrides:
        name, options = presets.parse_arg(arg)
        arg = presets.format_arg(name, {**options, **overrides[PRESET]})
    return f"{path}:{arg}" if arg else path


# ---------------------------------------------------------------------------------------------
# Overrides <-> configs and command lines


def apply(config, overrides):
    """A copy of `config` with `overrides` ({'train.lr_g': 1e-3}) set; unknown fields raise ValueError."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for path, value in fields(overrides).items():
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
    return [f"--config.{path}={flag_value(value)}" for path, value in fields(overrides).items()]


def run_name(index, overrides):
    """'003-attention=simplex,heads=2': sortable, readable, and safe as a directory name."""
    parts = [shown(path, v) if path in (CONFIG_FILE, PRESET) else f"{path.rsplit('.', 1)[-1]}={flag_value(v)}"
             for path, v in overrides.items()]
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
    params = list(dict.fromkeys(k for r in runs for k in r["overrides"]))  # CONFIG_FILE / PRESET too: they vary
    metrics = [final_metrics(r["workdir"]) for r in runs]
    metric_keys = sorted(set().union(*metrics)) if metrics else []
    columns = ["run", "status", *params, *metric_keys]
    rows = []
    for run, m in zip(runs, metrics):
        row = {"run": run["name"], "status": run["status"]}
        row.update({p: shown(p, run["overrides"][p]) if p in run["overrides"] else "" for p in params})
        row.update({k: m.get(k, "") for k in metric_keys})
        rows.append(row)
    return columns, rows


def write_csv(path, columns, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def cell(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def markdown_table(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_markdown(path, columns, rows):
    with open(path, "w") as f:
        f.write(markdown_table(columns, rows))


def plot(path, rows, metric, param, params):
    """metric against the swept `param`, one line per combination of the other swept values."""
    import matplotlib  # deferred: plotting is the only user, and matplotlib takes seconds to import

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
