"""`ganjax export --workdir DIR --out G.ckpt [--step N]`: a generator-only inference checkpoint.

Writes G_ema's params and buffers plus the run's config (Orbax directory) from the latest complete
training checkpoint of DIR (or step N). `ganjax sample` and `ganjax eval` read it like a workdir.
"""

from absl import flags

from ganjax.checkpoint import CheckpointError, export_generator

flags.DEFINE_string("workdir", None, "training workdir (or its checkpoints dir, or one step dir)", required=True)
flags.DEFINE_string("out", None, "destination directory for the exported generator (must not exist)", required=True)
flags.DEFINE_integer("step", None, "training step to export (default: the latest complete checkpoint)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"ganjax export takes no positional arguments (got {argv[1:]})")
    try:
        out = export_generator(FLAGS.workdir, FLAGS.out, step=FLAGS.step)
    except CheckpointError as e:
        raise SystemExit(f"ganjax export: {e}") from None
    print(f"exported generator to {out}")
