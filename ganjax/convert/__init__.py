"""Import the authors' released GANsformer checkpoints (TF or PyTorch format) into ganjax.

- unpickle.py:    a restricted unpickler (no TensorFlow, no torch, no code from the file) for dnnlib TF pickles,
                  the PyTorch version's persistent-module pickles and torch.save state dicts.
- tf_names.py:    TF variable names -> the reference PyTorch state_dict names and layouts.
- infer.py:       the ganjax `model` config from the weights' shapes and the pickle's recorded settings.
- torch_names.py: reference PyTorch names -> ganjax variable paths with layout transforms.
- derived.py:     the buffers ganjax computes (FIR kernels, grid encodings) checked against the snapshot's.
- gansformer.py:  `convert(src, out_dir)` (the `ganjax convert gansformer` command), `read_source`,
                  `build_variables`.
"""

from ganjax.convert.gansformer import build_variables, convert, read_source
from ganjax.convert.unpickle import ConvertError

__all__ = ["ConvertError", "build_variables", "convert", "read_source"]
