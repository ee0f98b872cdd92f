"""Reference PyTorch state_dict names -> ganjax variable paths, with the layout transforms.

ganjax's `official` model mirrors the reference module tree (ganjax/models/__init__.py): the generator's
params are 'pos', 'mapping_network/...', 'synthesis_network/b<res>/...'; its buffers are
'mapping_network/w_avg' and the per-layer 'noise_const'; the discriminator's are 'b<res>/...'.
Layouts: dense [out, in] -> [in, out]; conv OIHW -> HWIO; the 4x4 const CHW -> HWC; D's epilogue fc
consumes NHWC features flattened (h, w, c), PyTorch flattens (c, h, w), so its rows are permuted.
Equalized-lr storage (randn / lrmul stored, gain / sqrt(fan_in) * lrmul at use) is the same on both sides,
so values are copied unscaled.
"""

import re

import numpy as np

from ganjax.convert.derived import DERIVED  # buffers ganjax computes: checked there, not mapped here

def _dense(w):
    return np.asarray(w).T

def _conv(w):
    return np.asarray(w).transpose(2, 3, 1, 0)

def _same(w):
    return np.asarray(w)

def _const(w):
    return np.asarray(w).transpose(1, 2, 0)

def _epilogue_fc(w):
    # [out, C*4*4] over (c, h, w) -> [4*4*C, out] over (h, w, c)
    w = np.asarray(w)
    out, n = w.shape
    c = n // 16
    return w.reshape(out, c, 4, 4).transpose(2, 3, 1, 0).reshape(16 * c, out)

# (pattern over the PyTorch name, collection, ganjax path template, transform)
_GENERATOR_RULES = [
    (r"pos", "params", "pos", _same),
    (r"mapping\.w_avg", "buffers", "mapping_network/w_avg", _same),
    # l<i>.fc0/fc1: the residual mapping (GANsformer); l<i>: the plain fc stack (the StyleGAN2 baseline).
    (r"mapping\.(global_mlp|mlp)\.(l\d+\.fc\d|l\d+|out_layer)\.weight", "params", "mapping_network/{0}/{1}/weight",
     _dense),
    (r"mapping\.(global_mlp|mlp)\.(l\d+\.fc\d|l\d+|out_layer)\.bias", "params", "mapping_network/{0}/{1}/bias", _same),
    (r"mapping\.mlp\.(sa\d+)\.(\w+)\.weight", "params", "mapping_network/mlp/{0}/{1}/weight", _dense),
    (r"mapping\.mlp\.(sa\d+)\.(\w+)\.bias", "params", "mapping_network/mlp/{0}/{1}/bias", _same),
    (r"synthesis\.b4\.const", "params", "synthesis_network/b4/const", _const),
    (r"synthesis\.(b\d+)\.(conv\d|conv_last|torgb|skip)\.weight", "params", "synthesis_network/{0}/{1}/weight", _conv),
    (r"synthesis\.(b\d+)\.(conv\d|torgb)\.biasAct\.bias", "params", "synthesis_network/{0}/{1}/bias", _same),
    (r"synthesis\.(b\d+)\.(conv\d|conv_last|torgb)\.affine\.weight", "params",
     "synthesis_network/{0}/{1}/affine/weight", _dense),
    (r"synthesis\.(b\d+)\.(conv\d|conv_last|torgb)\.affine\.bias", "params",
     "synthesis_network/{0}/{1}/affine/bias", _same),
    (r"synthesis\.(b\d+)\.(conv\d)\.noise_strength", "params", "synthesis_network/{0}/{1}/noise_strength", _same),
    (r"synthesis\.(b\d+)\.(conv\d)\.noise_const", "buffers", "synthesis_network/{0}/{1}/noise_const", _same),
    (r"synthesis\.(b\d+)\.(conv\d)\.transformer\.(centroids|att_weight)", "params",
     "synthesis_network/{0}/{1}/transformer/{2}", _same),
    (r"synthesis\.(b\d+)\.(conv\d)\.transformer\.(\w+)\.weight", "params",
     "synthesis_network/{0}/{1}/transformer/{2}/weight", _dense),
    (r"synthesis\.(b\d+)\.(conv\d)\.transformer\.(\w+)\.bias", "params",
     "synthesis_network/{0}/{1}/transformer/{2}/bias", _same),
]

_DISCRIMINATOR_RULES = [
    (r"b4\.fc\.weight", "params", "b4/fc/weight", _epilogue_fc),
    (r"b4\.(fc|out)\.bias", "params", "b4/{0}/bias", _same),
    (r"b4\.out\.weight", "params", "b4/out/weight", _dense),
    (r"(b\d+)\.(fromrgb|conv0|conv1|skip|conv)\.weight", "params", "{0}/{1}/weight", _conv),
    (r"(b\d+)\.(fromrgb|conv0|conv1|conv)\.biasAct\.bias", "params", "{0}/{1}/bias", _same),
]

def _map(tensors, rules):
    """{torch name: array} -> ({(collection, ganjax path): array}, [torch names matching no rule])."""
    out, unmatched = {}, []
    for name, value in tensors.items():
        if DERIVED.fullmatch(name):
            continue
        for pattern, collection, template, transform in rules:
            m = re.fullmatch(pattern, name)
            if m:
                out[(collection, template.format(*(g.replace(".", "/") for g in m.groups())))] = (
                    name, np.array(transform(value), dtype=np.float32, order="C"))
                break
        else:
            unmatched.append(name)
    return out, unmatched

def generator_paths(tensors):
    return _map(tensors, _GENERATOR_RULES)

def discriminator_paths(tensors):
    return _map(tensors, _DISCRIMINATOR_RULES)
