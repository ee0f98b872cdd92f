"""Datasets and the input pipeline.

- `prepare(config)`: makes the TFDS dataset named by config.data (array_record, in config.data.data_dir):
  'shapes' (embedded procedural scenes, scenes.py), 'folder' (config.data.folder), or a TFDS catalog name.
- `make_loader(config, batch_sharding, *, process_index=None, process_count=None) -> Loader`: an infinite
  iterator of globally sharded float32 [B, R, R, 3] batches in [-1, 1] (with config.data.label, pairs of
  images and int32 labels), with get_state()/set_state().
  `prepare` checks that every shard file holds the records dataset_info.json lists (DatasetDamaged if not).
- `class_counts(config)`: examples per class of config.data.label (ganjax/data/labels.py says which labels).
Importing this package registers the TFDS builders ganjax_shapes, ganjax_folder and ganjax_catalog.
"""

from ganjax.data.loader import Loader, class_counts, make_loader
from ganjax.data.prepare import DatasetDamaged, builder_and_split, prepare, validate
from ganjax.data.tfds_catalog import GanjaxCatalog
from ganjax.data.tfds_folder import GanjaxFolder
from ganjax.data.tfds_shapes import GanjaxShapes

__all__ = ["Loader", "make_loader", "class_counts", "prepare", "builder_and_split", "validate", "DatasetDamaged",
           "GanjaxShapes", "GanjaxFolder", "GanjaxCatalog"]
