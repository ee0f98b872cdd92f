"""`ganjax report DIR [DIR ...] [--out OUT] [--group_by family]`: the scaling-study report of a set of runs.

Each DIR is a run's workdir or a directory of them (a sweep). Writes into OUT (default DIR/report for one
DIR): fid_vs_compute.png (log compute, one curve per run, the frontier across runs, a fitted law
FID(C) = a * C^-b + c per group), fid_vs_wall.png, fid_vs_kimg.png, points.csv (every evaluation),
runs.csv, frontier.csv, fits.csv, report.md and report.html (all of it on one page). Runs of different FID
protocols get separate panels, with a warning. Nothing is written when the directories hold no run.
"""

import os

from absl import flags

from ganjax.study import figures, runs as study_runs

flags.DEFINE_string("out", "", "output directory (default: DIR/report when one DIR is given)")
flags.DEFINE_list("group_by", [study_runs.FAMILY], "what groups runs for the fitted laws and colours: 'family' "
                  "(GANsformer / StyleGAN2) and/or config fields, e.g. family,model.channel_base")
FLAGS = flags.FLAGS


def main(argv):
    directories = argv[1:]
    if not directories:
        raise SystemExit("ganjax report: give one or more run or sweep directories: ganjax report DIR [DIR ...]")
    if not FLAGS.out and len(directories) > 1:
        raise SystemExit("ganjax report: --out is required with several directories")
    out = FLAGS.out or os.path.join(directories[0], "report")
    try:
        runs = study_runs.find_runs(directories, FLAGS.group_by)
    except ValueError as e:
        raise SystemExit(f"ganjax report: {e}")
    warnings = study_runs.warnings(runs)
    for w in warnings:
        print(f"warning: {w}")
    analysis = figures.analyse(runs)
    for name, path in figures.write_report(analysis, out, warnings).items():
        print(f"{name}: {path}")
    for protocol, panel in analysis.items():
        for group, fit in panel["fits"].items():
            print(f"fit {group} ({protocol}): {fit.describe()}")
