"""The Grain input pipeline: TFDS array_record split -> globally sharded float32 batches in [-1, 1].

Order of the data. One global stream is defined for a (dataset, shuffle_seed): the split shuffled with a
fresh permutation each epoch (Grain folds the epoch into the seed), repeated forever, each element mirrored
or not by a coin seeded from its stream position. Global batch t is stream elements [t*B, (t+1)*B). A
process reads only its rows of each global batch (the rows its devices hold in `batch_sharding`), so the
processes together read every element of an epoch exactly once, and the batches do not depend on how many
processes there are. The iterator state is the number of batches consumed, so a run resumes with exactly
the next batch, even on another process count.

Speed. Grain threads (data.prefetch of them, plus data.worker_count processes if set) decode and assemble
whole local batches ahead of the train step; `next()` only copies uint8 rows to the devices (4x less than
float32) and converts them there with a jitted, sharded op. `wait_seconds` accumulates the time next()
spent blocked, so a train loop can report the share of step time spent waiting for data.
"""

import logging
import math
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from absl import logging as absl_logging

from ganjax.data import prepare as prepare_lib
from ganjax.data import sources

STATE_VERSION = 1


class _NoOpenCvAdvice(logging.Filter):
    """TFDS logs "OpenCV is not installed. We recommend using OpenCV ..." the first time it decodes a PNG.
    PIL decodes these images fast enough (a run's `data_wait_share` is the share of time spent waiting for
    data), so the advice is dropped rather than sending users to install OpenCV."""

    def filter(self, record):
        return not str(record.msg).startswith("OpenCV is not installed")


absl_logging.get_absl_logger().addFilter(_NoOpenCvAdvice())


def _image(example):
    return example["image"]


class _Labeled:
    """example -> (image, int32 class), the class read by data.label's reader (ganjax/data/labels.py)."""

    def __init__(self, read):
        self.read = read

    def __call__(self, example):
        return example["image"], np.int32(self.read(example))


def _mirror(element, rng: np.random.Generator):
    flip = rng.random() < 0.5
    if isinstance(element, tuple):  # (image, label)
        return (element[0][:, ::-1] if flip else element[0]), element[1]
    return element[:, ::-1] if flip else element


def _row_range(batch_sharding, global_shape):
    """[lo, hi): the global batch rows held by this process's devices (must be one contiguous block)."""
    b = global_shape[0]
    spans = sorted({(s[0].start or 0, b if s[0].stop is None else s[0].stop)
                    for s in batch_sharding.addressable_devices_indices_map(global_shape).values()})
    lo, hi = spans[0][0], spans[0][1]
    for start, stop in spans[1:]:
        if start > hi:
            raise ValueError(f"parallel: this process's devices hold non-contiguous batch rows {spans}; "
                             "order the mesh so each process owns one block of the data axes")
        hi = max(hi, stop)
    return lo, hi


def _num_batch_shards(batch_sharding) -> int:
    axes = batch_sharding.spec[0] if len(batch_sharding.spec) else None
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(batch_sharding.mesh.shape[a] for a in axes)


class Loader:
    """Infinite iterator of global batches; see the module docstring for the order of the data.

    `next(loader)` -> jax.Array float32 [B, R, R, 3] in [-1, 1] with `batch_sharding`; with a label
    (config.data.label, `loader.labeled`) the pair (images, int32 labels [B] sharded like the images' rows).
    `loader.next_local()` -> this process's uint8 rows [B / num_shards, R, R, 3] (what next() would send; with
    a label, (rows, labels)).
    `loader.get_state()` / `loader.set_state(state)`: JSON-serialisable dict; exact resume.
    """

    def __init__(self, config: ml_collections.ConfigDict, batch_sharding: jax.sharding.NamedSharding, *,
                 process_index: int | None = None, process_count: int | None = None):
        prepare_lib.validate(config)
        res, batch = config.model.resolution, config.train.batch_size
        self.global_shape = (batch, res, res, 3)
        self.batch_sharding = batch_sharding
        self._simulated = process_index is not None or process_count is not None
        if self._simulated:
            process_count = jax.process_count() if process_count is None else process_count
            process_index = jax.process_index() if process_index is None else process_index
            if not 0 <= process_index < process_count:
                raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
        else:
            process_count, process_index = jax.process_count(), jax.process_index()
        shards = _num_batch_shards(batch_sharding)
        if batch < 1 or batch % shards:
            raise ValueError(f"train.batch_size: {batch} is not divisible by the {shards} data shards "
                             "(devices along the mesh's batch axes)")
        if batch % process_count:
            raise ValueError(f"train.batch_size: {batch} is not divisible by the {process_count} processes")
        if self._simulated:
            rows = batch // process_count
            self.shard_index, self.num_shards, self.local_batch = process_index, process_count, rows
        else:
            lo, hi = _row_range(batch_sharding, self.global_shape)
            self.local_batch = hi - lo
            self.shard_index, self.num_shards = lo // self.local_batch, batch // self.local_batch

        builder, split = prepare_lib.builder_and_split(config)
        if not builder.is_prepared():
            raise ValueError(f"data.dataset: {config.data.dataset!r} is not prepared in {builder.data_dir}; "
                             "run `ganjax data prepare` (or call ganjax.data.prepare(config)) first")
        self.labeled = bool(config.data.label)
        self.num_classes = int(config.model.num_classes)
        if self.labeled:
            sources.check_class_count(config, builder)
        source = grain.MapDataset.source(builder.as_data_source(split=split))
        if config.data.max_images:  # the first N examples of the split (small-data runs, e.g. for ADA)
            source = source[: int(config.data.max_images)]
        self.num_examples = len(source)
        self.dataset = f"{builder.name}/{builder.builder_config.name}:{split}"
        self._seed = int(config.data.shuffle_seed)
        self._worker_count = int(config.data.worker_count)

        element = _Labeled(sources.label_reader(config.data.dataset, config.data.label)) if self.labeled else _image
        ds = source.map(element).shuffle(seed=self._seed).repeat(None)
        if config.data.mirror:
            ds = ds.random_map(_mirror, seed=self._seed + 1)
        # Chunks of `local_batch` consecutive stream elements; chunk c is row block c % num_shards of
        # global batch c // num_shards, so this process takes every num_shards-th chunk.
        ds = ds.batch(self.local_batch, drop_remainder=True)[self.shard_index::self.num_shards]
        # data.prefetch local batches are read ahead, each by its own thread (0: read in the calling thread).
        ahead = int(config.data.prefetch)
        it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=ahead, prefetch_buffer_size=ahead))
        if self._worker_count:
            if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside `ganjax` take defaults
                flags.FLAGS.mark_as_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
        self._it = iter(it_ds)
        self._step = 0
        self.wait_seconds = 0.0
        # uint8 -> [-1, 1] on the devices; the min() undoes XLA's reciprocal rounding 255/127.5 up to 1+1e-7.
        self._to_float = jax.jit(lambda x: jnp.minimum(x.astype(jnp.float32) / 127.5 - 1.0, 1.0),
                                 out_shardings=batch_sharding)
        self.label_sharding = jax.sharding.NamedSharding(batch_sharding.mesh,
                                                         jax.sharding.PartitionSpec(*batch_sharding.spec[:1]))

    def __iter__(self):
        return self

    def next_local(self):
        start = time.perf_counter()
        rows = next(self._it)
        self.wait_seconds += time.perf_counter() - start
        self._step += 1
        if self.labeled:
            labels = rows[1]
            bad = (labels < 0) | (labels >= self.num_classes)
            if bad.any():
                raise ValueError(f"data.label: class {int(labels[bad][0])} in {self.dataset} is outside "
                                 f"[0, model.num_classes={self.num_classes})")
        return rows

    def __next__(self):
        if self._simulated and (self.num_shards, self.shard_index) != (jax.process_count(), jax.process_index()):
            raise RuntimeError("a loader made with a simulated process_index/process_count only gives "
                               "next_local(); global arrays need the real process layout")
        rows = self.next_local()
        if not self.labeled:
            return self._to_float(jax.make_array_from_process_local_data(self.batch_sharding, rows, self.global_shape))
        images = jax.make_array_from_process_local_data(self.batch_sharding, rows[0], self.global_shape)
        labels = jax.make_array_from_process_local_data(self.label_sharding, rows[1], self.global_shape[:1])
        return self._to_float(images), labels

    def get_state(self) -> dict:
        state = {"version": STATE_VERSION, "step": self._step, "global_batch": self.global_shape[0],
                 "shuffle_seed": self._seed, "dataset": self.dataset, "num_examples": self.num_examples}
        if self._worker_count:  # worker processes keep per-worker positions; resume needs the same count
            state["worker_count"] = self._worker_count
            state["grain"] = self._it.get_state()
        return state

    def set_state(self, state: dict):
        """Continue after the last batch counted in `state` (from get_state, possibly another process count)."""
        mine = self.get_state()
        for key in ("version", "global_batch", "shuffle_seed", "dataset", "num_examples", "worker_count"):
            if state.get(key) != mine.get(key):
                field = {"global_batch": "train.batch_size", "shuffle_seed": "data.shuffle_seed",
                         "worker_count": "data.worker_count"}.get(key, "data.dataset")
                raise ValueError(f"data iterator state: saved with {key}={state.get(key)!r}, now "
                                 f"{mine.get(key)!r} ({field}); the saved batch order cannot be continued")
        if self._worker_count:
            self._it.set_state(state["grain"])
        else:
            self._it.set_state({"next_index": int(state["step"])})
        self._step = int(state["step"])

    def close(self):
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def class_counts(config: ml_collections.ConfigDict) -> np.ndarray:
    """int64 [model.num_classes]: how many examples of the split (all of it, as FID's reference) hold each class
    of config.data.label; read without decoding the images."""
    builder, split = prepare_lib.builder_and_split(config)
    if not builder.is_prepared():
        raise ValueError(f"data.dataset: {config.data.dataset!r} is not prepared in {builder.data_dir}")
    sources.check_class_count(config, builder)
    n = int(config.model.num_classes)
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    read = sources.label_reader(config.data.dataset, config.data.label)
    labels = np.fromiter((read(source[i]) for i in range(len(source))), np.int64, len(source))
    return np.bincount(labels, minlength=n)[:n]


def make_loader(config: ml_collections.ConfigDict, batch_sharding: jax.sharding.NamedSharding, *,
                process_index: int | None = None, process_count: int | None = None) -> Loader:
    return Loader(config, batch_sharding, process_index=process_index, process_count=process_count)
