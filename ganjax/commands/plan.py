"""`ganjax plan --config FILE:PRESET --tpu SLICE`: compile the training programs for a Cloud TPU slice on this
host (no TPU needed: libtpu's ahead-of-time compiler) and report, per chip, whether the run fits in HBM,
its roofline step time and bound, communication, ceilings on img/s and MFU, and what config.train.total_kimg
would cost.

  ganjax plan --config configs/gansformer.py:ffhq256 --tpu v5p-8 [--strategy fsdp | --mesh dp=2,fsdp=2]
              [--batch_per_chip 32 | --batch 256] [--price 4.2] [--json] [--out DIR]
  ganjax plan ... --variants plain --phases=false --sample=false        # one program: the quickest look
  ganjax plan ... --max_batch [--max_batch_strategies dp,fsdp,fsdp_tp]   # largest per-chip batch that fits
  ganjax plan ... --sweep --out DIR [--sweep_slices v5e-8,v5p-8 --sweep_strategies dp,fsdp --sweep_sizes s,m]

Slices are Cloud TPU accelerator types: v4-8 .. v4-8192 and v5p-8 .. v5p-8192 count TensorCores (2 per
chip), v5e-4 .. v5e-256 (v5litepod-N) and v6e-4 .. v6e-256 count chips. Needs libtpu (`pip install
'jax[tpu]'`, or ganjax's `[tpu]` extra). A plan compiles only: it never trains and writes only to --out.
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from ganjax.plan import tpu

tpu.prepare_environment()  # libtpu reads its environment when it loads, so before JAX starts

from ganjax import hardware  # noqa: E402
from ganjax.config import ConfigError  # noqa: E402

config_flags.DEFINE_config_file("config", None, "config file and preset, e.g. configs/gansformer.py:ffhq256")
flags.DEFINE_string("tpu", None, "Cloud TPU slice, e.g. v5e-8, v5p-64, v4-32, v6e-256")
flags.DEFINE_string("strategy", "", "dp | fsdp | fsdp_tp | shard_map with its default mesh ('' = the config's)")
flags.DEFINE_string("mesh", "", "explicit mesh, e.g. dp=4,fsdp=2,model=1 (its product = the chips)")
flags.DEFINE_integer("batch", 0, "global batch (0 = config.train.batch_size)")
flags.DEFINE_integer("batch_per_chip", 0, "images per chip; the global batch is this x chips")
flags.DEFINE_string("variants", "all", "iteration variants to compile: all (the amortised iteration needs them), "
                    "heaviest (every lazy phase on: decides the fit), or one by name (plain, r1, ...)")
flags.DEFINE_boolean("phases", True, "also compile each phase on its own (per-phase FLOPs, bytes, roofline)")
flags.DEFINE_boolean("sample", True, "also compile G_ema's evaluation batch (config.eval.batch_size)")
flags.DEFINE_float("price", None, "price per chip-hour for the cost (default config.train.price_per_device_hour)")
flags.DEFINE_float("assume_mfu", None, "MFU assumed for the second cost estimate (default config.bench.assume_mfu)")
flags.DEFINE_boolean("json", False, "print the plan record as one JSON line too")
flags.DEFINE_string("out", "", "directory for plan.md / plan.jsonl (and the sweep's CSV, markdown and plot)")
flags.DEFINE_boolean("max_batch", False, "search the largest per-chip batch that fits, per strategy (from --batch_per_chip)")
flags.DEFINE_string("max_batch_strategies", "dp,fsdp,fsdp_tp", "strategies of --max_batch")
flags.DEFINE_integer("max_batch_beyond", 2, "--max_batch also compiles this many multiples past the first refusal "
                     "(the TPU compiler's memory is not monotone in the batch)")
flags.DEFINE_boolean("sweep", False, "plan every --sweep_slices x --sweep_strategies x --sweep_sizes")
flags.DEFINE_string("sweep_slices", "v5e-8,v5e-64,v5e-256,v5p-8,v5p-64,v5p-512,v4-8,v4-128,v6e-8,v6e-256",
                    "slices of --sweep")
flags.DEFINE_string("sweep_strategies", "dp,fsdp", "strategies of --sweep")
flags.DEFINE_string("sweep_sizes", "s,m", "model sizes of --sweep (the presets' size= ladder)")
FLAGS = flags.FLAGS


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _check_inputs(config):
    """Every bad input named before anything compiles."""
    if config is None:
        raise SystemExit("ganjax plan: --config FILE:PRESET is required")
    if not FLAGS.tpu and not FLAGS.sweep:
        raise SystemExit("ganjax plan: --tpu SLICE is required (e.g. --tpu v5p-8); known slices: "
                         + ", ".join(hardware.tpu_slice_names()))
    for name in ([FLAGS.tpu] if FLAGS.tpu else []) + (_csv(FLAGS.sweep_slices) if FLAGS.sweep else []):
        hardware.tpu_slice(name)  # ValueError listing the known slices
    if FLAGS.sweep and not FLAGS.out:
        raise SystemExit("ganjax plan --sweep: --out DIR is required (plan_sweep.csv, .md, .png)")
    if FLAGS.out and (os.path.isdir(os.path.join(FLAGS.out, "checkpoints"))
                      or os.path.exists(os.path.join(FLAGS.out, "metrics.jsonl"))):
        raise SystemExit(f"ganjax plan: --out {FLAGS.out} is a training workdir; a plan never writes into one")
    tpu.check_libtpu()


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"ganjax plan: unexpected arguments {argv[1:]}")
    config = FLAGS.config
    try:
        _check_inputs(config)
        from ganjax.plan import compile as compile_lib  # imports JAX: after the environment is set
        from ganjax.plan import report

        if FLAGS.sweep:
            def plan_one(c, slice_name, strategy, batch_per_chip):
                return compile_lib.plan(c, slice_name, strategy=strategy, batch_per_chip=batch_per_chip,
                                        phases=False, sample=False, assume_mfu=FLAGS.assume_mfu,
                                        price_per_chip_hour=FLAGS.price, log=_log)

            bpc = FLAGS.batch_per_chip or max(1, config.train.batch_size // 8)
            rows = report.sweep(config, _csv(FLAGS.sweep_slices), _csv(FLAGS.sweep_strategies), _csv(FLAGS.sweep_sizes),
                                bpc, FLAGS.out, max_batch_search=FLAGS.max_batch, beyond=FLAGS.max_batch_beyond,
                                plan_one=plan_one, log=_log)
            print(open(os.path.join(FLAGS.out, "plan_sweep.md")).read())
            print(f"ganjax plan --sweep: {len(rows)} plans -> {FLAGS.out}/plan_sweep.csv, plan_sweep.md, plan_sweep.png")
            return 0
        rec = compile_lib.plan(config, FLAGS.tpu, strategy=FLAGS.strategy or None, mesh=FLAGS.mesh or None,
                               batch=FLAGS.batch or None, batch_per_chip=FLAGS.batch_per_chip or None,
                               phases=FLAGS.phases, sample=FLAGS.sample, variants=FLAGS.variants,
                               assume_mfu=FLAGS.assume_mfu,
                               price_per_chip_hour=FLAGS.price, log=_log)
        if FLAGS.max_batch:
            rec["max_batch"] = [report.max_batch(config, FLAGS.tpu, s, start=rec["batch_per_chip"],
                                                 beyond=FLAGS.max_batch_beyond, log=_log)
                                for s in _csv(FLAGS.max_batch_strategies)]
    except (ConfigError, ValueError, tpu.LibtpuMissing) as e:
        raise SystemExit(f"ganjax plan: {e}") from None
    text = report.markdown(rec)
    for mb in rec.get("max_batch", []):
        text += "\n" + report.max_batch_line(mb)
    print(text)
    if FLAGS.json:
        print(json.dumps(rec))
    if FLAGS.out:
        os.makedirs(FLAGS.out, exist_ok=True)
        with open(os.path.join(FLAGS.out, "plan.md"), "a") as f:
            f.write(text + "\n")
        with open(os.path.join(FLAGS.out, "plan.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0 if rec["memory"]["fits"] else 3  # 3: it does not fit (launch/tpu_vm.sh stops on it)
