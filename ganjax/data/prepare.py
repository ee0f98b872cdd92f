"""From `config.data` to a prepared TFDS builder: which builder, which split, and checks before any work."""

import contextlib
import io
import os
import time

import jax
import ml_collections
from array_record.python import array_record_module
from etils import epath
from jax.experimental import multihost_utils

from ganjax.data import labels as labels_lib
from ganjax.data import sources, tfds_catalog
from ganjax.models.config import ModelConfig


class DatasetDamaged(ValueError):
    """A prepared dataset's file does not hold what its dataset_info.json lists (the message names it)."""


def data_dir(config: ml_collections.ConfigDict):
    return config.data.data_dir or None  # None: TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)


def validate(config: ml_collections.ConfigDict):
    """Checks of config.data (and the resolution it is stored at) that need no files; errors name the field."""
    ModelConfig(resolution=config.model.resolution).validate_resolution()
    d = config.data
    if not d.dataset:
        raise ValueError(f"data.dataset: must be set ({', '.join(sources.SOURCES)} or a TFDS catalog name)")
    if not d.aspect_ratio > 0:
        raise ValueError(f"data.aspect_ratio: must be > 0 (height / width; got {d.aspect_ratio})")
    if d.prefetch < 0:
        raise ValueError(f"data.prefetch: must be >= 0 batches (got {d.prefetch})")
    if d.worker_count < 0:
        raise ValueError(f"data.worker_count: must be >= 0 (got {d.worker_count})")
    problems = sources.problems(config)
    if problems:
        raise ValueError(problems[0].removeprefix("config."))


def builder_and_split(config: ml_collections.ConfigDict):
    """(TFDS builder, split to read) for config.data; does not prepare anything."""
    validate(config)
    d, r = config.data, config.model.resolution
    made_here = sources.builder(config, data_dir(config))
    if made_here is not None:
        return made_here, d.split
    # A catalog dataset: the derived, resized copy holds the configured source split as 'train'.
    # Unknown names fail here, early.
    source = tfds_catalog.source_builder(d.dataset, data_dir(config), tuple(sources.SOURCES))
    classes = labels_lib.catalog_classes(source.info.features, d.label, d.dataset) if d.label else ()
    cfg = tfds_catalog.CatalogConfig.make(d.dataset, d.split, r, d.aspect_ratio, d.label, classes)
    return tfds_catalog.make_builder(cfg, data_dir(config)), "train"


def prepare(config: ml_collections.ConfigDict):
    """Make the TFDS dataset named by config.data (idempotent: fast when already prepared); returns the builder.

    In a multi-process run, process 0 prepares first and the others wait, then check (or, with per-host data
    dirs, make) their own copy; so a shared data dir is written once.
    """
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            builder = _prepare_here(config)
        multihost_utils.sync_global_devices("ganjax.data.prepare")
        if jax.process_index() != 0:
            builder = _prepare_here(config)
        return builder
    return _prepare_here(config)


def _prepare_here(config):
    builder, _ = builder_and_split(config)
    if config.data.dataset not in sources.SOURCES:
        source = tfds_catalog.source_builder(config.data.dataset, data_dir(config), tuple(sources.SOURCES))
        if not builder.is_prepared():
            tfds_catalog.prepare_source(source, config.data.dataset)
    if config.data.dataset in sources.SOURCES and not epath.Path(builder.data_dir, "dataset_info.json").exists():
        # TFDS would announce a download ("Downloading and preparing dataset Unknown size (download: Unknown
        # size ...)") for data that is made here: say what happens instead, and keep its progress bars.
        print(f"data: making the {config.data.dataset} dataset {builder.builder_config.name} in "
              f"{builder.data_dir} (nothing is downloaded)", flush=True)
        start = time.time()
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare()
        print(f"data: made it in {time.time() - start:.1f} s", flush=True)
    else:
        builder.download_and_prepare()  # a no-op when prepared
    check_files(builder)
    return builder


def check_files(builder):
    """Every shard file of the prepared dataset holds the records its dataset_info.json lists. A truncated or
    replaced file (a failing disk, a partial copy) would otherwise pass here and stop training later with a
    reader error that names no file. Opening a shard reads only its footer (its record index)."""
    for name, split in builder.info.splits.items():
        for path, expected in zip(split.filepaths, split.shard_lengths):
            path = os.fspath(path)
            try:
                reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
                found = reader.num_records()
                reader.close()
            except (OSError, RuntimeError, ValueError) as e:
                found, why = None, f"cannot be read ({e})"
            else:
                why = f"holds {found} records where dataset_info.json lists {expected}"
            if found != expected:
                raise DatasetDamaged(f"the prepared dataset is damaged: {path} ({name} split) {why}. Delete "
                                     f"{builder.data_dir} and run `ganjax data prepare` again (or restore the file).")
