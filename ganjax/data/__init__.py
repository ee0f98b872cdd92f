"""Datasets and the input pipeline.

- `prepare(config)`: makes the TFDS dataset named by config.data (array_record, in config.data.data_dir):
  'shapes' (embedded procedural scenes, scenes.py), 'folder' (config.data.folder), or a TFDS catalog name.
- `make_loader(config, batch_sharding, *, process_index=None, process_count=None) -> Loader`: an infinite
  iterator of globally sharded float32 [B, R, R, 3] batches in [-1, 1], with get_state()/set_state().
Importing this package registers the TFDS builders ganjax_shapes, ganjax_folder and ganjax_catalog.
"""

from ganjax.data.loader import Loader, make_loader
from ganjax.data.prepare import builder_and_split, prepare, validate
from ganjax.data.tfds_catalog import GanjaxCatalog
from ganjax.data.tfds_folder import GanjaxFolder
from ganjax.data.tfds_shapes import GanjaxShapes

__all__ = ["Loader", "make_loader", "prepare", "builder_and_split", "validate",
           "GanjaxShapes", "GanjaxFolder", "GanjaxCatalog"]
