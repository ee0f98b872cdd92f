"""TF GANsformer variable names -> the reference PyTorch version's state_dict names and layouts.

The TF version (dnnlib `Network` pickles: G, D, Gs) names variables by TF scope; the reference's
`pytorch_version/loader.py` documents how each maps to a PyTorch module. Translating TF to the PyTorch
naming first lets one table (torch_names.py) serve both formats. Layout rules, from the two codebases:
- dense kernels are [in, out] in TF, [out, in] in PyTorch;
- conv kernels are HWIO in TF, OIHW in PyTorch; the generator's up-sampling convs (Conv0_up, Skip)
  are also flipped spatially, because TF runs them as a flipped transposed conv;
- TF adds 1 to the modulation bias at run time, PyTorch initialises the stored bias to 1;
- the 4x4 const has a leading batch dim of 1 in TF; per-layer noise is a [1, 1, R, R] variable
  'synthesis/noise<i>' with i = 2*log2(R) - 5 + conv index (0 for the 4x4 layer).
Equalized-lr storage is the same in both (randn / lrmul stored, gain / sqrt(fan_in) * lrmul at use).
"""

import re

import numpy as np

from ganjax.convert.unpickle import ConvertError

_ATT = {  # TF AttLayer variable suffix -> PyTorch TransformerLayer submodule
    "query": "to_queries", "key": "to_keys", "value": "to_values",
    "from_pos": "from_pos_map", "to_pos": "to_pos_map", "out": "modulation",
}


def _dense(w):
    return np.ascontiguousarray(np.asarray(w).T)


def _conv(w):
    return np.ascontiguousarray(np.asarray(w).transpose(3, 2, 0, 1))


def _conv_flipped(w):
    return np.ascontiguousarray(np.asarray(w)[::-1, ::-1].transpose(3, 2, 0, 1))


def _attention(prefix, rest, value):
    """AttLayer_* variables below `prefix` (a torch module path ending in '.')."""
    m = re.fullmatch(r"(weight|bias)_(query|key|value|from_pos|to_pos|out)", rest)
    if m:
        kind, sub = m.groups()
        return f"{prefix}{_ATT[sub]}.{kind}", _dense(value) if kind == "weight" else np.asarray(value)
    if rest == "toasgn_init":
        return f"{prefix}centroids", np.asarray(value)
    if rest == "iter_0/st_weights":
        return f"{prefix}att_weight", np.asarray(value)
    return None


def _mapping(name, value):
    m = re.fullmatch(r"(global/)?Dense(\d+)_(\d+)/(weight|bias)", name)
    if m:
        glob, i, j, kind = m.groups()
        mlp = "global_mlp" if glob else "mlp"
        return f"mapping.{mlp}.l{i}.fc{j}.{kind}", _dense(value) if kind == "weight" else np.asarray(value)
    m = re.fullmatch(r"(global/)?Dense(\d+)/(weight|bias)", name)
    if m:  # the output layer is the scope Dense<last residual index>
        glob, _, kind = m.groups()
        mlp = "global_mlp" if glob else "mlp"
        return f"mapping.{mlp}.out_layer.{kind}", _dense(value) if kind == "weight" else np.asarray(value)
    m = re.fullmatch(r"AttLayer_(\d+)/(.+)", name)
    if m:
        return _attention(f"mapping.mlp.sa{m.group(1)}.", m.group(2), value)
    return None


def _conv_index(res, scope):
    if res == 4:
        return 1 if scope == "Conv" else None
    return {"Conv0_up": 0, "Conv1": 1}.get(scope)


def _synthesis(name, value, resolution):
    m = re.fullmatch(r"noise(\d+)", name)
    if m:
        n = int(m.group(1))
        log2 = (n + 5) // 2
        return f"synthesis.b{2 ** log2}.conv{n - 2 * log2 + 5}.noise_const", np.asarray(value)[0, 0]
    if name == "4x4/Const/const":
        return "synthesis.b4.const", np.asarray(value)[0]
    m = re.fullmatch(r"(\d+)x\1/(.+)", name)
    if not m:
        return None
    res, rest = int(m.group(1)), m.group(2)
    b = f"synthesis.b{res}"
    if rest == "Skip/weight":
        return f"{b}.skip.weight", _conv_flipped(value)
    m = re.fullmatch(r"ToRGB/(extraLayer/)?(weight|bias|mod_weight|mod_bias)", rest)
    if m and res == resolution:
        extra, kind = m.groups()
        mod = f"{b}.conv_last" if extra else f"{b}.torgb"
        if kind == "weight":
            return f"{mod}.weight", _conv(value)
        if kind == "mod_weight":
            return f"{mod}.affine.weight", _dense(value)
        if kind == "mod_bias":
            return f"{mod}.affine.bias", np.asarray(value) + 1
        return (f"{mod}.biasAct.bias", np.asarray(value)) if not extra else None
    m = re.fullmatch(r"(Conv|Conv0_up|Conv1)/(.+)", rest)
    if not m:
        return None
    i = _conv_index(res, m.group(1))
    if i is None:
        return None
    layer, var = f"{b}.conv{i}", m.group(2)
    if var == "weight":
        return f"{layer}.weight", _conv_flipped(value) if i == 0 else _conv(value)
    if var == "bias":
        return f"{layer}.biasAct.bias", np.asarray(value)
    if var == "noise_strength":
        return f"{layer}.noise_strength", np.asarray(value)
    if var == "mod_weight":
        return f"{layer}.affine.weight", _dense(value)
    if var == "mod_bias":
        return f"{layer}.affine.bias", np.asarray(value) + 1
    m = re.fullmatch(r"AttLayer_l2n/(.+)", var)
    if m:
        return _attention(f"{layer}.transformer.", m.group(1), value)
    return None


def generator_to_torch(tf_vars, resolution):
    """{TF name: array} of a G/Gs network (components prefixed 'mapping/', 'synthesis/') ->
    {PyTorch state_dict name: array}. A TF variable with no PyTorch counterpart raises, naming it."""
    out = {}
    for name, value in tf_vars.items():
        if name == "ltnt_emb/emb":
            hit = "pos", np.asarray(value)
        elif name == "dlatent_avg":
            hit = "mapping.w_avg", np.asarray(value)
        elif name.startswith("mapping/"):
            hit = _mapping(name[len("mapping/"):], value)
        elif name.startswith("synthesis/"):
            hit = _synthesis(name[len("synthesis/"):], value, resolution)
        else:
            hit = None
        if hit is None:
            raise ConvertError(f"TF generator variable {name!r} {list(np.shape(value))} maps to no ganjax "
                               "parameter (unsupported GANsformer option?)")
        out[hit[0]] = hit[1]
    return out


def discriminator_to_torch(tf_vars):
    """{TF name: array} of D -> {PyTorch state_dict name: array}; unknown variables raise, naming them."""
    out = {}
    for name, value in tf_vars.items():
        hit = None
        m = re.fullmatch(r"(\d+)x\1/(FromRGB|Conv0|Conv1_down|Skip|Conv|Dense0)/(weight|bias)", name)
        if m:
            res, scope, kind = int(m.group(1)), m.group(2), m.group(3)
            mod = {"FromRGB": "fromrgb", "Conv0": "conv0", "Conv1_down": "conv1", "Skip": "skip",
                   "Conv": "conv", "Dense0": "fc"}[scope]
            if (res == 4) == (scope in ("Conv", "Dense0")) and not (scope == "Skip" and kind == "bias"):
                if kind == "bias":
                    hit = f"b{res}.{mod}.bias" if mod == "fc" else f"b{res}.{mod}.biasAct.bias", np.asarray(value)
                else:
                    hit = f"b{res}.{mod}.weight", _dense(value) if mod == "fc" else _conv(value)
        m = re.fullmatch(r"Output/(weight|bias)", name)
        if m:
            hit = f"b4.out.{m.group(1)}", _dense(value) if m.group(1) == "weight" else np.asarray(value)
        if hit is None:
            raise ConvertError(f"TF discriminator variable {name!r} {list(np.shape(value))} maps to no ganjax "
                               "parameter (unsupported GANsformer option?)")
        out[hit[0]] = hit[1]
    return out
