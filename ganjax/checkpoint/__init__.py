"""Orbax checkpoints: the training run's Checkpointer, and generator-only export/loading for inference.

- checkpointer.py: periodic async saves of the whole train state + data iterator + config + metric
  history, exact and resharded restore, preemption (SIGTERM) handling.
- generator.py: `export_generator` (G_ema + config) and `open_generator` / `load_generator`, which read either
  kind (from a workdir, the newest step that reads).
- trees.py: named pytree comparison (the incompatible-checkpoint error) and JSON conversion.
"""

from ganjax.checkpoint.checkpointer import Checkpointer, ensure_writable
from ganjax.checkpoint.generator import export_generator, load_generator, open_generator, resolve
from ganjax.checkpoint.trees import CheckpointError, check_compatible, flatten_with_names

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "check_compatible",
    "ensure_writable",
    "export_generator",
    "flatten_with_names",
    "load_generator",
    "open_generator",
    "resolve",
]
