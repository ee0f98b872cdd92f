"""Reference (real-image) feature statistics of a dataset, computed once and cached in the data dir."""

import glob
import hashlib
import json
import os
import re

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


def larger_cached_reference(config, num_images, cache_dir=None) -> str | None:
    """The cached statistics of the same reals with the most images beyond `num_images` (None: none cached).
    The reference reals are the first N of a fixed shuffled order, so the first `num_images` features of a
    larger reference are this reference's: `ganjax eval --num_images 200` after a 1,000-image FID reads them
    instead of running Inception over the reals again. The smallest larger one is picked."""
    if num_images is None:
        return None
    wanted = reference_cache_path(config, num_images, cache_dir)
    found = []
    for path in glob.glob(os.path.join(os.path.dirname(wanted), "*.npz")):
        m = re.search(rf"-(\d+|all)-{re.escape(fid_protocol(config))}-[0-9a-f]{{10}}\.npz$", path)
        count = m and (None if m.group(1) == "all" else int(m.group(1)))
        if m and (count is None or count > num_images) and reference_cache_path(config, count, cache_dir) == path:
            found.append((float("inf") if count is None else count, path))
    return min(found)[1] if found else None


def exists_everywhere(path):
    """Process 0 decides whether the cache exists, so all processes take the same (collective) branch."""
    exists = np.int32(os.path.isfile(path))
    if jax.process_count() > 1:
        exists = multihost_utils.broadcast_one_to_all(exists)
    return bool(exists)


def dataset_reference_stats(batches, num_images, extractor, cache_path=None, larger_path=None):
    """FeatureStats of the real images in `batches` (see extract.extract_features), read from `cache_path` when
    present, else from the first `num_images` of `larger_path` (larger_cached_reference), else computed and
    written to `cache_path` by process 0. Feed un-augmented images (no mirroring)."""
    if cache_path and exists_everywhere(cache_path):
        stats = FeatureStats.load(cache_path)
        if num_images is not None and stats.num_images != num_images:
            raise ValueError(f"{cache_path}: holds {stats.num_images} images, expected {num_images}")
        return stats
    if larger_path and num_images is not None and exists_everywhere(larger_path):
        larger = FeatureStats.load(larger_path)
        if larger.num_images >= num_images:
            if jax.process_index() == 0:
                print(f"reference statistics: the first {num_images} of the {larger.num_images} reals cached in "
                      f"{larger_path}", flush=True)
            return FeatureStats.from_features(larger.features[:num_images])
    stats = FeatureStats.from_features(extract.extract_features(batches, num_images, extractor,
                                                                progress="reference statistics of the reals"))
    if cache_path and jax.process_index() == 0:
        stats.save(cache_path)
    return stats
