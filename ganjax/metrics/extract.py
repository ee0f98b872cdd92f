"""Inception features of many images: jitted, the batch split over every device of a mesh, every process
feeding its own part, the features gathered to every process."""

import itertools
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from ganjax.metrics import inception, protocols


def default_mesh():
    """All devices of all processes on one 'batch' axis."""
    return jax.make_mesh((jax.device_count(),), ("batch",), axis_types=(AxisType.Auto,))


class FeatureExtractor:
    """`extractor(batch) -> [B, 2048]` numpy pool3 features, identical on every process.

    batch: a global jax.Array [B, H, W, 3] (e.g. a sharded generator output; any sharding), or a numpy array
    holding this process's part of the batch (what a per-process data loader yields; in one process that is
    the whole batch). uint8 [0, 255] or float [-1, 1]. Any batch size: a numpy part is padded to a multiple of
    this process's devices and the padding dropped again. One compile per distinct batch shape. The images
    reach the network as the FID `protocol` does (ganjax/metrics/protocols.py).
    """

    def __init__(self, params, mesh=None, protocol: str = protocols.DEFAULT):
        self.protocol = protocols.get(protocol).name  # an unknown name fails here, before any compile
        self.mesh = mesh if mesh is not None else default_mesh()
        # Split the batch over every mesh axis: feature extraction has no use for model/fsdp parallelism.
        self.sharding = NamedSharding(self.mesh, PartitionSpec(tuple(self.mesh.axis_names)))
        self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
        self._local_shards = len(self.sharding.addressable_devices)
        self._features = jax.jit(self._sharded_features)

    def _sharded_features(self, params, images):
        images = jax.lax.with_sharding_constraint(images, self.sharding)
        return jax.lax.with_sharding_constraint(inception.features(params, images, self.protocol),
                                              self.sharding)

    def _gather(self, x):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def __call__(self, batch):
        if isinstance(batch, jax.Array) and batch.shape[0] % self.mesh.size == 0:
            if batch.sharding.device_set != self.sharding.device_set:
                batch = jax.device_put(batch, self.sharding)  # e.g. one device's array: jit won't mix device sets
            return self._gather(self._features(self.params, batch))
        if isinstance(batch, jax.Array) and not batch.is_fully_addressable:
            raise ValueError(
                f"a global image batch spread over processes must have a size divisible by the {self.mesh.size} "
                f"mesh devices, got {batch.shape[0]}"
            )
        local = np.asarray(batch)
        pad = -len(local) % self._local_shards
        valid = np.concatenate([np.ones(len(local), bool), np.zeros(pad, bool)])
        local = np.concatenate([local, np.zeros((pad,) + local.shape[1:], local.dtype)])
        images = jax.make_array_from_process_local_data(self.sharding, local)
        valid = jax.make_array_from_process_local_data(self.sharding, valid)
        features = self._gather(self._features(self.params, images))
        return features[self._gather(valid)]


PROGRESS_SECONDS = 15.0  # an extraction longer than this says how far it is, at most this often


def extract_features(batches, num_images, extractor, progress: str = ""):
    """Features of the first `num_images` images of `batches` -> [num_images, 2048] float32 numpy.

    batches: an iterable of batches, or a function step -> batch (called with 0, 1, 2, ...), each batch as
    FeatureExtractor takes it. num_images=None: every image of a finite iterable. progress: what the images
    are ("generated images"); process 0 then prints "<progress>: i/N images (s, ~s left)" every
    PROGRESS_SECONDS of a long extraction (a CPU takes minutes per 1,000 images).
    """
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if callable(batches):
        if num_images is None:
            raise ValueError("num_images=None (all images) needs a finite iterable, not a batch function")
        batches = map(batches, itertools.count())
    batches, parts, have = iter(batches), [], 0
    start = said = time.time()
    while num_images is None or have < num_images:  # test before pulling: a batch may cost a generator call
        batch = next(batches, None)
        if batch is None:
            break
        parts.append(extractor(batch))
        have += len(parts[-1])
        if progress and jax.process_index() == 0 and time.time() - said >= PROGRESS_SECONDS:
            said, elapsed = time.time(), time.time() - start
            left = "" if num_images is None else f", ~{elapsed * max(0, num_images - have) / have:.0f} s left"
            total = "" if num_images is None else f"/{num_images}"
            print(f"{progress}: {min(have, num_images or have)}{total} images ({elapsed:.0f} s{left})", flush=True)
    if num_images is not None and have < num_images:
        raise ValueError(f"the image source ended after {have} of the {num_images} images requested")
    if not parts:
        raise ValueError("the image source yielded no images")
    return np.concatenate(parts)[:num_images]
