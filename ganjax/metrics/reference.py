"""Reference (real-image) feature statistics of a dataset, computed once and cached in the data dir."""

import hashlib
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from ganjax.metrics import extract, protocols
from ganjax.metrics.stats import FeatureStats


def fid_protocol(config) -> str:
    """config.eval.fid_protocol (configs saved before the field existed: the default, what they used)."""
    return protocols.get(config.eval.get("fid_protocol", protocols.DEFAULT)).name


def reference_cache_path(config, num_images, cache_dir=None):
    """Where the statistics of `num_images` reals (None = all) of config.data at config.model.resolution live:
    <cache_dir or data.data_dir or $TFDS_DATA_DIR or ~/tensorflow_datasets>/ganjax_fid_stats/<name>.npz,
    the name readable plus a hash of every data field that changes the images, and the FID protocol."""
    d = config.data
    key = {
        "dataset": d.dataset,
        "folder": os.path.abspath(d.folder) if d.folder else "",
        "split": d.split,
        "num_images_dataset": d.num_images,  # size of the procedural dataset
        "aspect_ratio": d.aspect_ratio,
        "resolution": config.model.resolution,
        "num_images": num_images,
        "fid_protocol": fid_protocol(config),  # statistics of another protocol are never reused
    }
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    count = "all" if num_images is None else str(num_images)
    name = f"{d.dataset}-{d.split}-{config.model.resolution}px-{count}-{fid_protocol(config)}-{digest}.npz"
    root = cache_dir or d.data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    return os.path.join(root, "ganjax_fid_stats", name)


def exists_everywhere(path):
    """Process 0 decides whether the cache exists, so all processes take the same (collective) branch."""
    exists = np.int32(os.path.isfile(path))
    if jax.process_count() > 1:
        exists = multihost_utils.broadcast_one_to_all(exists)
    return bool(exists)


def dataset_reference_stats(batches, num_images, extractor, cache_path=None):
    """FeatureStats of the real images in `batches` (see extract.extract_features), read from `cache_path` when
    present, else computed and written there by process 0. Feed un-augmented images (no mirroring)."""
    if cache_path and exists_everywhere(cache_path):
        stats = FeatureStats.load(cache_path)
        if num_images is not None and stats.num_images != num_images:
            raise ValueError(f"{cache_path}: holds {stats.num_images} images, expected {num_images}")
        return stats
    stats = FeatureStats.from_features(extract.extract_features(batches, num_images, extractor))
    if cache_path and jax.process_index() == 0:
        stats.save(cache_path)
    return stats
