"""`ganjax bench --config FILE:PRESET`: compile time, step time per phase and per amortised iteration,
img/s, sec/kimg, analytic FLOPs (cross-checked with XLA), MFU, peak memory and collective communication
per device; as JSON lines (--json) and a markdown table.

  ganjax bench --config configs/bench.py:cpu_small [--mesh dp=8,fsdp=1,model=1] [--batch N] [--steps N]
  ganjax bench --config configs/bench.py:cpu_small --sweep --out DIR     # meshes x sizes x batches -> CSV, plots
  ganjax bench --config configs/gansformer.py:ffhq256 --scaling --device h100 --out DIR   # 8..4096 devices

On a CPU host, --cpu_devices virtual devices stand in for a mesh (default: as many as the mesh needs, 8 for
--sweep and --scaling).
"""

import json
import os
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from ganjax import compilation_cache
from ganjax.bench import peaks, run, scaling_report, sweep as sweep_lib
from ganjax.config import validate
from ganjax.plan import tpu

# The virtual CPU device count (jax_num_cpu_devices) and libtpu's environment (tpu.prepare_environment) are
# set in main, before anything asks JAX for a device: they only have to precede the backends' start, which
# none of these imports triggers.

config_flags.DEFINE_config_file("config", None, "config file and preset, e.g. configs/bench.py:cpu_small")
flags.DEFINE_string("mesh", "", "mesh, e.g. dp=8,fsdp=1,model=1 ('' = the config's parallel section)")
flags.DEFINE_integer("batch", 0, "global batch (0 = config.train.batch_size)")
flags.DEFINE_integer("steps", None, "timed executions of each compiled program (default config.bench.steps)")
flags.DEFINE_integer("warmup", None, "untimed executions after compiling (default config.bench.warmup)")
flags.DEFINE_boolean("phases", True, "also time each phase (G main, D main, D R1, G PL) as its own program")
flags.DEFINE_boolean("json", False, "print one JSON line per record (in addition to the markdown table)")
flags.DEFINE_string("device", "", "peak-table device for MFU / scaling: v4 v5e v5p v6e a100 h100 h200 "
                    "('' = detect; CPUs are measured by a matmul probe)")
flags.DEFINE_string("out", "", "directory for bench.jsonl / bench.md (and sweep or scaling outputs)")
flags.DEFINE_integer("cpu_devices", 0, "virtual CPU devices (0 = what the mesh needs; 8 for --sweep/--scaling)")
flags.DEFINE_boolean("sweep", False, "sweep meshes x model sizes x per-device batches (config.bench.sweep_*)")
flags.DEFINE_boolean("scaling", False, "write the weak-scaling estimate for --device at 8..4096 devices")
FLAGS = flags.FLAGS


def _csv(text, cast=str):
    return [cast(t.strip()) for t in text.split(",") if t.strip()]


def _setup_devices(config):
    need = FLAGS.cpu_devices
    if not need:
        need = 8 if (FLAGS.sweep or FLAGS.scaling) else 1
        if FLAGS.mesh:
            need = max(need, sweep_lib.mesh_devices(sweep_lib.parse_mesh(FLAGS.mesh)))
        else:
            dims = [config.parallel.mesh_data, config.parallel.mesh_fsdp, config.parallel.mesh_model]
            if -1 not in dims:
                need = max(need, dims[0] * dims[1] * dims[2])
    jax.config.update("jax_num_cpu_devices", need)
    return need


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"ganjax bench: unexpected arguments {argv[1:]}")
    config = FLAGS.config
    if config is None:
        raise SystemExit("ganjax bench: --config FILE:PRESET is required")
    if FLAGS.scaling:  # may compile for an abstract TPU slice (libtpu reads its environment when it loads)
        tpu.prepare_environment()
    cpu_devices = _setup_devices(config)
    cache_dir = compilation_cache.enable(config.compilation_cache)

    b = config.bench
    steps = b.steps if FLAGS.steps is None else FLAGS.steps
    warmup = b.warmup if FLAGS.warmup is None else FLAGS.warmup
    if steps < 1 or warmup < 0:
        raise SystemExit(f"ganjax bench: --steps must be >= 1 and --warmup >= 0 (got {steps}, {warmup})")
    mesh = sweep_lib.parse_mesh(FLAGS.mesh) if FLAGS.mesh else None
    if mesh:
        sweep_lib.apply_mesh(config, mesh)
    if FLAGS.batch:
        config.train.batch_size = FLAGS.batch
    device_key = FLAGS.device or None
    if device_key:
        peaks.lookup(device_key)  # fail early on an unknown name
    out = FLAGS.out
    if out:
        os.makedirs(out, exist_ok=True)

    if FLAGS.scaling:
        if not device_key:
            raise SystemExit("ganjax bench --scaling: name the target with --device (v4 v5e v5p v6e a100 h100 h200)")
        text = scaling_report.report(config, device_key, log=logging.info)
        _emit(text, out, "scaling.md")
        return 0

    if FLAGS.sweep:
        if not out:
            raise SystemExit("ganjax bench --sweep: --out DIR is required (sweep.csv, sweep.png, sweep.jsonl)")
        rows = sweep_lib.sweep(config, b.sweep_meshes.split(";"), _csv(b.sweep_sizes), _csv(b.sweep_batches, int),
                               out, steps=steps, warmup=warmup, log=logging.info)
        print(f"ganjax bench --sweep: {len(rows)} points -> {out}/sweep.csv, {out}/sweep.png")
        return 0

    num_devices = sweep_lib.mesh_devices(mesh) if mesh else None
    validate(config, num_devices=num_devices or len(jax.devices()))
    rec = run.bench(config, steps=steps, warmup=warmup, phases=FLAGS.phases, device_key=device_key,
                    num_devices=num_devices)
    rec["cpu_devices"] = cpu_devices if rec["platform"] == "cpu" else None
    rec["load_average"] = os.getloadavg()
    rec["compilation_cache"] = cache_dir  # with a cache, a repeated bench's compile_s is the time to load it
    if FLAGS.json:
        print(json.dumps(rec))
    text = run.markdown_table([rec]) + "\n\n" + run.phase_table(rec) + "\n"
    if "peak_note" in rec:
        text += f"\nnote: {rec['peak_note']}\n"
    if "peak_error" in rec:
        text += f"\nwarning: {rec['peak_error']}\n"
    if out:
        with open(os.path.join(out, "bench.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
    _emit(text, out, "bench.md")
    return 0


def _emit(text, out, name):
    print(text)
    if out:
        with open(os.path.join(out, name), "a" if name == "bench.md" else "w") as f:
            f.write(text + "\n")
    sys.stdout.flush()
