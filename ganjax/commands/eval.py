"""`ganjax eval --workdir DIR [--checkpoint PATH] [--num_images N] [--metrics fid,kid,pr] [--per_class]
[--fid_protocol pytorch-fid|stylegan]`.

Scores G_ema of a checkpoint (default: DIR's latest; PATH may be an exported generator, a workdir, its
checkpoints dir or one step dir) with FID / KID / precision-recall on the FID Inception, against the
dataset's cached reference statistics, all work split over every device. Prints the scores and appends one
record {"kind": "eval", "step", "kimg", "checkpoint", "eval/num_images", "eval/fid_protocol", "fid", ...} to
DIR/metrics.jsonl.
Needs the Inception weights once: `ganjax convert inception --out <path>` (default path: see --inception_path).
Defaults (N, metrics, weights path, batch, per class, FID protocol) come from the checkpoint's config.eval.
--per_class: a conditional generator's FID per class too (fid/class<c>, fid/class_mean; ganjax/evaluate.py).
"""

import json
import os
import time

import jax
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec

from ganjax import metrics, parallel
from ganjax.checkpoint import CheckpointError, open_generator
from ganjax.config import base_config
from ganjax.evaluate import Evaluator, InceptionWeightsMissing
from ganjax.metrics.protocols import PROTOCOLS
from ganjax.metrics.scores import parse_metrics
from ganjax.train.summary import MetricWriter

flags.DEFINE_string("workdir", None, "run directory: metrics.jsonl is appended here (and the checkpoint's "
                    "default source)", required=True)
flags.DEFINE_string("checkpoint", "", "exported generator, workdir, checkpoints dir or step dir ('' = --workdir)")
flags.DEFINE_integer("step", None, "training step to load from a workdir (default: the latest)")
flags.DEFINE_integer("num_images", None, "generated images (default: config.eval.num_images); FID depends on it")
flags.DEFINE_alias("num-images", "num_images")
flags.DEFINE_string("metrics", "", "comma list of fid, kid, pr (default: config.eval.metrics)")
flags.DEFINE_bool("per_class", None, "a conditional generator's FID per class too (default: config.eval.per_class)")
flags.DEFINE_string("inception_path", "", "FID Inception .npz (default: config.eval.inception_path, else "
                    "~/.cache/ganjax/inception_fid.npz)")
flags.DEFINE_enum("fid_protocol", None, list(PROTOCOLS), "how images reach the Inception (ganjax/metrics/"
                  "protocols.py; default: config.eval.fid_protocol); FIDs of different protocols are not "
                  "comparable")
flags.DEFINE_integer("batch_size", None, "images per generator/Inception call (default: config.eval.batch_size)")
flags.DEFINE_float("psi", 1.0, "truncation psi of the generated images (1 = none, the field's convention)")
flags.DEFINE_integer("seed", 0, "seed of the generated latents and noise")
flags.DEFINE_string("data_dir", None, "override config.data.data_dir (where the dataset and its reference "
                    "statistics live)")
FLAGS = flags.FLAGS


def _step_of(kind: str, directory: str):
    name = os.path.basename(os.path.normpath(directory))
    return int(name) if kind == "train" and name.isdigit() else None


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"ganjax eval takes no positional arguments (got {argv[1:]})")
    if FLAGS.num_images is not None and FLAGS.num_images < 2:
        raise SystemExit(f"ganjax eval: --num_images must be >= 2, got {FLAGS.num_images}")
    if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
        raise SystemExit(f"ganjax eval: --batch_size must be >= 1, got {FLAGS.batch_size}")

    # Before any backend starts: a launcher's multi-process environment (SLURM, TPU pod, ...) is detected.
    parallel.maybe_initialize_distributed(base_config())
    source = FLAGS.checkpoint or FLAGS.workdir
    try:
        if FLAGS.metrics:
            parse_metrics(FLAGS.metrics)
        mesh = metrics.default_mesh()
        G, variables, config, kind, directory = open_generator(source, step=FLAGS.step,
                                                               sharding=NamedSharding(mesh, PartitionSpec()))
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"ganjax eval: {e}") from None
    if FLAGS.data_dir is not None:
        config.data.data_dir = FLAGS.data_dir
    if FLAGS.fid_protocol is not None:
        config.eval.fid_protocol = FLAGS.fid_protocol
    try:
        evaluator = Evaluator(config, mesh, num_images=FLAGS.num_images, metrics=FLAGS.metrics or None,
                              inception_path=FLAGS.inception_path or None, batch_size=FLAGS.batch_size,
                              per_class=FLAGS.per_class)
        if evaluator.by_class and not G.cfg.num_classes:
            raise ValueError("--per_class: the generator is unconditional (model.num_classes=0)")
    except (InceptionWeightsMissing, ValueError) as e:
        raise SystemExit(f"ganjax eval: {e}") from None

    start = time.time()
    scores = evaluator(G, variables["params"], variables["buffers"], psi=FLAGS.psi, seed=FLAGS.seed)
    seconds = time.time() - start
    step = _step_of(kind, directory)
    record = {"kind": "eval", "checkpoint": directory, "eval/num_images": evaluator.num_images,
              "eval/fid_protocol": evaluator.protocol, "eval/psi": FLAGS.psi, "eval/seconds": seconds, **scores}
    if step is not None:
        record = {"step": step, "kimg": step * int(config.train.batch_size) / 1000, **record}
    if jax.process_index() == 0:
        os.makedirs(FLAGS.workdir, exist_ok=True)
        if step is None:  # an exported generator: no step to put it at in TensorBoard
            with open(os.path.join(FLAGS.workdir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
        else:  # metrics.jsonl and the scores as TensorBoard scalars at the checkpoint's step, like the loop's
            writer = MetricWriter(FLAGS.workdir)
            writer.scalars(step, {k: v for k, v in record.items() if k != "step"})
            writer.close()
        shown = " ".join(f"{k} {v:.4f}" for k, v in scores.items())
        print(f"{shown} ({evaluator.num_images} generated images, {seconds:.0f}s) <- {directory}", flush=True)
