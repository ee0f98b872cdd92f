"""`ganjax data prepare|show|bench`: make a dataset once, look at it, and time its loader.

  ganjax data prepare --config configs/gansformer.py:shapes32
  ganjax data prepare --dataset folder --folder ~/photos --resolution 256 --aspect_ratio 0.75
  ganjax data show --config configs/gansformer.py:shapes64 --out grid.png --n 64
  ganjax data bench --config configs/gansformer.py:shapes32 --steps 200

The dataset comes from --config (default: the base config) with any of the shortcut flags below
overriding its data fields; `--config.data.<field>=...` overrides work too. `show` draws the first n
images the training loader would give (shuffled, mirrored as configured) as one PNG grid. `bench` times
the loader alone (global batches of train.batch_size on all local devices) and prints images/s.

Preset datasets that need more than `ganjax data prepare` (DATA_DIR: data_dir, default ~/tensorflow_datasets):
  cityscapes (cityscapes256): registration at https://www.cityscapes-dataset.com/login/; put
    leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip in DATA_DIR/downloads/manual/ (TFDS's manual
    dir), then `ganjax data prepare --config configs/gansformer.py:cityscapes256`.
  lsun/bedroom (bedroom256): TFDS downloads it from dl.yf.io (about 43 GB); where that server cannot be
    reached, export its images (LMDB) to a folder and use --dataset folder --folder DIR.
  ffhq (ffhq256, ffhq1024): not in the TFDS catalog; --config.data.folder=DIR holding the images.
Preparing a TFDS catalog dataset needs TensorFlow once (pip install 'ganjax[tf]').
"""

import json
import math
import os
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from ganjax import data, viz
from ganjax.config import base_config

config_flags.DEFINE_config_file("config", None, "config file and preset, e.g. configs/gansformer.py:shapes32")
flags.DEFINE_string("dataset", None, "overrides data.dataset: shapes | folder | a TFDS catalog name")
flags.DEFINE_integer("resolution", None, "overrides model.resolution (a power of two)")
flags.DEFINE_string("data_dir", None, "overrides data.data_dir (TFDS data dir)")
flags.DEFINE_string("folder", None, "overrides data.folder (for --dataset folder)")
flags.DEFINE_integer("num_images", None, "overrides data.num_images (size of the shapes train split)")
flags.DEFINE_float("aspect_ratio", None, "overrides data.aspect_ratio (height / width crop before padding)")
flags.DEFINE_string("split", None, "overrides data.split")
flags.DEFINE_string("out", "", "show: the PNG grid to write")
flags.DEFINE_integer("n", 64, "show: number of images")
flags.DEFINE_integer("steps", 200, "bench: batches to time (after 5 warm-up batches)")
FLAGS = flags.FLAGS

ACTIONS = ("prepare", "show", "bench")


def resolve_config():
    config = FLAGS.config if FLAGS.config is not None else base_config()
    for name, field in (("dataset", "data.dataset"), ("resolution", "model.resolution"),
                        ("data_dir", "data.data_dir"), ("folder", "data.folder"),
                        ("num_images", "data.num_images"), ("aspect_ratio", "data.aspect_ratio"),
                        ("split", "data.split")):
        value = FLAGS[name].value
        if value is not None:
            section, key = field.split(".")
            config[section][key] = os.path.expanduser(value) if name in ("data_dir", "folder") else value
    return config


def uint8_grid(images, cols=None):
    """uint8 [N, H, W, 3] -> one uint8 grid image, row-major, black padding (no float round trip)."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    padded = np.concatenate([images, np.zeros((rows * cols - n, h, w, c), np.uint8)])
    return padded.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def show(config, out: str, n: int):
    if n < 1:
        raise ValueError(f"--n: must be >= 1 (got {n})")
    config = config.copy_and_resolve_references()
    config.train.batch_size = n
    data.prepare(config)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:1])
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    loader = data.make_loader(config, sharding, process_index=0, process_count=1)
    try:
        images = loader.next_local()
    finally:
        loader.close()
    if loader.labeled:  # (images, labels): the grid in class order, the classes printed
        images, labels = images
        order = np.argsort(labels, kind="stable")
        images = images[order]
        print(f"classes ({config.data.label}) in grid order: {' '.join(map(str, labels[order]))}")
    viz.save_png(uint8_grid(images), out)
    return images


def bench(config, steps: int) -> dict:
    """Loader throughput: global batches per second on all local devices, after a warm-up."""
    data.prepare(config)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    loader = data.make_loader(config, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    try:
        for _ in range(5):
            jax.block_until_ready(next(loader))
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            batch = next(loader)  # images (and labels, with data.label)
        jax.block_until_ready(batch)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        loader.close()
    return {"dataset": loader.dataset, "resolution": config.model.resolution, "batch": config.train.batch_size,
            "steps": steps, "images_per_s": round(steps * config.train.batch_size / seconds, 1),
            "ms_per_batch": round(1000 * seconds / steps, 2),
            # CPU time of this process (all threads) per batch: a measure that a busy machine does not skew
            "cpu_ms_per_batch": round(1000 * cpu / steps, 2)}


def main(argv):
    if len(argv) != 2 or argv[1] not in ACTIONS:
        raise SystemExit(f"usage: ganjax data {{{'|'.join(ACTIONS)}}} [--config FILE:PRESET] [flags] "
                         f"(got {argv[1:]})")
    config = resolve_config()
    try:
        _run(argv[1], config)
    except data.DatasetDamaged as e:
        raise SystemExit(f"ganjax data {argv[1]}: {e}") from None


def _run(action, config):
    if action == "prepare":
        start = time.time()
        builder = data.prepare(config)
        splits = {name: info.num_examples for name, info in builder.info.splits.items()}
        print(json.dumps({"dataset": f"{builder.name}/{builder.builder_config.name}", "dir": str(builder.data_dir),
                          "splits": splits, "seconds": round(time.time() - start, 2)}))
    elif action == "bench":
        print(json.dumps(bench(config, FLAGS.steps)))
    else:
        if not FLAGS.out:
            raise SystemExit("ganjax data show needs --out grid.png")
        images = show(config, FLAGS.out, FLAGS.n)
        print(f"wrote {FLAGS.out}: {len(images)} images of {images.shape[1]}x{images.shape[2]}")
