"""`ganjax sweep --config FILE:PRESET --workdir DIR [--sweep NAME]`: run the config file's get_sweep(NAME) runs.

Each run is one `python -m ganjax train --config=FILE:PRESET --workdir=DIR/<run> --config.<field>=<value>`
subprocess, run one after another. A subprocess per run (rather than calling the train loop in this
process) is the exact command a cluster launcher would run, and it gives each run a fresh JAX runtime:
no compilation caches, device buffers or jax.distributed state leak from one run into the next, and a
crash ends one run, not the sweep. Overrides given to `ganjax sweep` itself (`--config.train.total_kimg=2`)
apply to every run; the sweep's own values win where both set a field.

Afterwards the last value of every metric in each run's metrics.jsonl goes into DIR/sweep.csv and
DIR/sweep.md, and --plot_metric against --plot_param into DIR/sweep_<metric>.png; when runs logged FID, the
study report (`ganjax report DIR`: FID against compute, the frontier, fitted laws) goes into DIR/report. A
re-run resumes unfinished runs from their checkpoints (a compute-budget run continues to its budget).
--print_commands prints one launch command per run instead, optionally behind a --launcher prefix (e.g.
"sbatch launch/slurm.sbatch").
"""

import importlib.util
import inspect
import json
import os
import shlex
import signal
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from ganjax import sweep
from ganjax.config import validate
from ganjax.study import figures, runs as study_runs

config_flags.DEFINE_config_file("config", None, "config file and preset, e.g. configs/gansformer.py:shapes32")
flags.DEFINE_string("workdir", None, "sweep directory; run i trains in DIR/<run name>", required=True)
flags.DEFINE_string("sweep", None, "which of the config file's sweeps: get_sweep(NAME); default its default one")
flags.DEFINE_boolean("print_commands", False, "print one launch command per run and exit (nothing runs)")
flags.DEFINE_alias("print-commands", "print_commands")
flags.DEFINE_string("launcher", "", "with --print_commands: prefix for each command, e.g. 'sbatch launch/slurm.sbatch' "
                    "(the launcher receives the train flags)")
flags.DEFINE_string("plot_metric", "", "metric (a key of metrics.jsonl) to plot; '' = fid if the runs logged it")
flags.DEFINE_string("plot_param", "", "swept field on the plot's x axis; '' = the first swept field")
FLAGS = flags.FLAGS


def _module(path):
    spec = importlib.util.spec_from_file_location("ganjax_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(config_arg, name, config):
    """get_sweep(name[, config]) of the config file (config: the sweep's base config, for sweeps whose values
    depend on the preset)."""
    path = config_arg.partition(":")[0]
    module = _module(path)
    if not hasattr(module, "get_sweep"):
        raise SystemExit(f"ganjax sweep: {path} defines no get_sweep(name)")
    takes_config = len(inspect.signature(module.get_sweep).parameters) > 1
    try:
        runs = module.get_sweep(name, config) if takes_config else module.get_sweep(name)
    except ValueError as e:  # an unknown sweep name
        raise SystemExit(f"ganjax sweep: {path}: {e}")
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise SystemExit(f"ganjax sweep: {path}:get_sweep({name!r}) must return a non-empty list of dicts")
    return runs


def _run_base(config, config_arg, run_arg, cli_overrides):
    """The config a run starts from: the sweep's, or for a run with its own file or preset options that
    file's get_config(preset) with the sweep's command-line overrides."""
    if run_arg == config_arg:
        return config
    path, _, arg = run_arg.partition(":")
    if not os.path.exists(path):
        raise SystemExit(f"ganjax sweep: a run's {sweep.CONFIG_FILE} {path} does not exist")
    return sweep.apply(_module(path).get_config(arg or None), cli_overrides)


def plan(config, config_arg, workdir, python, sweep_name=None):
    """One entry per run, each validated before anything starts (a bad run fails the sweep up front)."""
    cli_overrides = config_flags.get_override_values(FLAGS["config"])
    runs = []
    defined = load_sweep(config_arg, sweep_name, config)
    for i, (overrides, named_by) in enumerate(zip(defined, sweep.varying(defined))):
        run_arg = sweep.run_config_arg(config_arg, overrides)
        try:
            validate(sweep.apply(_run_base(config, config_arg, run_arg, cli_overrides), overrides))
        except ValueError as e:
            raise SystemExit(f"ganjax sweep: run {i} {overrides}:\n{e}")
        name = sweep.run_name(i, named_by)
        run_dir = os.path.join(workdir, name)
        merged = {**{k: v for k, v in cli_overrides.items() if k not in overrides}, **overrides}
        runs.append(dict(name=name, overrides=overrides, workdir=run_dir, status="planned",
                         argv=sweep.train_command(run_arg, run_dir, merged, python=python)))
    return runs


def execute(run):
    os.makedirs(run["workdir"], exist_ok=True)
    log_path = os.path.join(run["workdir"], "sweep_run.log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(run["argv"], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait()
        except BaseException:  # Ctrl-C or SIGTERM of the sweep: pass it on, so no run outlives the sweep
            proc.terminate()
            proc.wait()
            raise
    run["status"] = "done" if code == 0 else f"failed({code})"
    if code:
        with open(log_path) as f:
            tail = f.readlines()[-20:]
        print(f"  run {run['name']} failed with exit code {code}; last lines of {log_path}:\n" + "".join(tail),
              file=sys.stderr)


def report(runs, workdir):
    columns, rows = sweep.collect(runs)
    sweep.write_csv(os.path.join(workdir, "sweep.csv"), columns, rows)
    sweep.write_markdown(os.path.join(workdir, "sweep.md"), columns, rows)
    params = [c for c in columns[2:] if any(c in r["overrides"] for r in runs)]
    print(f"results: {os.path.join(workdir, 'sweep.csv')}, {os.path.join(workdir, 'sweep.md')}")
    metric = FLAGS.plot_metric or ("fid" if "fid" in columns else "")
    if metric:
        param = FLAGS.plot_param or params[0]
        out = os.path.join(workdir, f"sweep_{metric.replace('/', '_')}.png")
        try:
            sweep.plot(out, rows, metric, param, params)
        except ValueError as e:  # the table is written; say why there is no plot
            return f"no plot: {e}"
        print(f"plot: {out}")
    return study_report(workdir)


def study_report(workdir):
    """The study report (ganjax report) of the sweep when its runs logged FID; a problem is returned."""
    try:
        found = study_runs.find_runs([workdir])
    except ValueError as e:
        return f"no study report: {e}"
    if not any(r.points for r in found):
        return None
    paths = figures.write_report(figures.analyse(found), os.path.join(workdir, "report"),
                                 study_runs.warnings(found))
    print(f"study report: {paths['report.html']}")
    return None


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"ganjax sweep: unexpected arguments {argv[1:]}")
    config_arg = config_flags.get_config_filename(FLAGS["config"]) if FLAGS.config is not None else None
    if not config_arg:
        raise SystemExit("ganjax sweep: --config FILE:PRESET is required")
    workdir = FLAGS.workdir
    if FLAGS.print_commands:
        # This interpreter's path, so a printed command runs outside an activated venv too.
        runs = plan(FLAGS.config, config_arg, workdir, python=sys.executable, sweep_name=FLAGS.sweep)
        prefix = shlex.split(FLAGS.launcher)
        for run in runs:
            argv_ = run["argv"][4:] if prefix else run["argv"]  # a launcher runs `python -m ganjax train` itself
            print(sweep.shell_join(prefix + argv_))
        return
    runs = plan(FLAGS.config, config_arg, workdir, python=sys.executable, sweep_name=FLAGS.sweep)
    os.makedirs(workdir, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through execute(), which stops the run
    for i, run in enumerate(runs):
        print(f"[{i + 1}/{len(runs)}] {run['name']}: {sweep.shell_join(run['argv'])}", flush=True)
        execute(run)
        with open(os.path.join(workdir, "sweep.json"), "w") as f:
            json.dump(runs, f, indent=1)
    problem = report(runs, workdir)
    failed = [r["name"] for r in runs if r["status"] != "done"]
    if failed:
        problem = f"{len(failed)} of {len(runs)} runs failed: {failed}" + (f"; {problem}" if problem else "")
    if problem:
        raise SystemExit(f"ganjax sweep: {problem}")
