"""Infer ganjax's `model` config section from reference-PyTorch-named weights (shapes) plus hints.

Shapes give resolution, channels, latent counts and dims, mapping depth, mapping attention, attention
layers and heads, conv_last, the minibatch-std channels. What shapes cannot show (global modulation:
the unused affine layers still exist; k-means iterations; lr multiplier; integration) comes from
`hints`, read from the pickle (TF static kwargs, or PyTorch module attributes) or given by the caller.
"""

import re

from ganjax.convert.unpickle import ConvertError

# The reference GANsformer defaults (pytorch_version/run_network.py --ganformer-default) for the
# settings a bare state dict does not record.
DEFAULT_HINTS = {"kmeans_iters": 1, "mapping_lrmul": 0.01, "integration": "mul", "norm": "layer",
                 "attention_dropout": 0.12, "mbstd_group": 4, "use_pos": True}


def _res_keys(names, pattern):
    return sorted({int(m.group(1)) for n in names for m in [re.match(pattern, n)] if m})


def _shape(tensors, name, source):
    if name not in tensors:
        raise ConvertError(f"{source}: variable {name!r} is missing (needed to infer the config)")
    return tuple(tensors[name].shape)


def _channel_rule(channels, source):
    """(channel_base, channel_max) with min(base // r, max) == channels[r] for every block resolution."""
    cmax = max(channels.values())
    res_top = max(channels)
    below = [r for r, c in channels.items() if c < cmax]
    candidates = [32768] + ([channels[max(below)] * max(below)] if below else [cmax * res_top])
    for base in candidates:
        if all(min(base // r, cmax) == c for r, c in channels.items()):
            return base, cmax
    raise ConvertError(f"{source}: channel counts {dict(sorted(channels.items()))} do not follow "
                       "min(channel_base // res, channel_max)")


def _mapping_stack(g, names, source):
    """(mapping_resnet, mapping_layers) of the global mapping MLP: residual layers l<i>.fc0/fc1 (GANsformer;
    mapping_layers counts the pairs) or plain fc layers l<i> (the StyleGAN2 baseline; ganjax's plain stack
    has 2 * mapping_layers of them)."""
    residual = _res_keys(names, r"mapping\.global_mlp\.l(\d+)\.fc0\.weight")
    plain = _res_keys(names, r"mapping\.global_mlp\.l(\d+)\.weight")
    if residual and plain:
        raise ConvertError(f"{source}: the mapping network mixes residual (l<i>.fc0) and plain (l<i>) layers")
    if residual:
        return True, len(residual)
    if not plain:
        raise ConvertError(f"{source}: variable 'mapping.global_mlp.l0.fc0.weight' (residual mapping) or "
                           "'mapping.global_mlp.l0.weight' (plain mapping) is missing")
    if len(plain) % 2:
        raise ConvertError(f"{source}: the plain mapping network has {len(plain)} layers (mapping.global_mlp.l0.."
                           f"l{len(plain) - 1}); ganjax's plain stack has an even number (2 x model.mapping_layers)")
    return False, len(plain) // 2


def infer_model(g, d, hints, source):
    """Model-section fields (dict) for generator weights `g` and discriminator weights `d` (or None)."""
    h = dict(DEFAULT_HINTS)
    h.update({k: v for k, v in hints.items() if v is not None})
    if "global_modulation" not in h:
        raise ConvertError(f"{source}: global modulation (the reference's 'style' option) is not recorded in "
                           "a bare state dict; convert the network pickle instead, or call ganjax.convert.convert(src, out, "
                           "global_modulation=True|False)")
    names = list(g)
    blocks = _res_keys(names, r"synthesis\.b(\d+)\.")
    if not blocks or blocks[0] != 4 or any(b != 2 * a for a, b in zip(blocks, blocks[1:])):
        raise ConvertError(f"{source}: synthesis blocks {blocks} are not 4, 8, ..., resolution")
    resolution = blocks[-1]
    channels = {4: _shape(g, "synthesis.b4.const", source)[0]}
    for r in blocks[1:]:
        channels[r] = _shape(g, f"synthesis.b{r}.conv1.weight", source)[0]
    if d is not None:
        for r in _res_keys(d, r"b(\d+)\.conv0\."):
            if _shape(d, f"b{r}.conv0.weight", source)[0] != channels[r]:
                raise ConvertError(f"{source}: discriminator b{r} has {d[f'b{r}.conv0.weight'].shape[0]} channels, "
                                   f"generator {channels[r]}: ganjax uses one channel rule for both")
    channel_base, channel_max = _channel_rule(channels, source)

    w_dim = _shape(g, "mapping.global_mlp.out_layer.weight", source)[0]
    mapping_resnet, layers = _mapping_stack(g, names, source)
    z_dim = _shape(g, "mapping.global_mlp.l0.fc0.weight" if mapping_resnet else "mapping.global_mlp.l0.weight",
                   source)[1]
    num_local = _shape(g, "pos", source)[0] if "pos" in g else 0
    mapping_attention = any(n.startswith("mapping.mlp.sa") for n in names)

    att = sorted({(int(m.group(1)), int(m.group(2))) for n in names
                  for m in [re.match(r"synthesis\.b(\d+)\.conv(\d)\.transformer\.centroids", n)] if m})
    if any(".transformer." in n for n in names) and not att:
        raise ConvertError(f"{source}: attention layers without k-means centroids: only the released "
                           "('official', parametric k-means) attention is supported")
    att_res = sorted({r for r, _ in att})
    heads = _shape(g, "synthesis.b{}.conv{}.transformer.centroids".format(*att[0]), source)[1] if att else 1
    expected = [(r, 1) if r == 4 else (r, i) for r in att_res for i in ((1,) if r == 4 else (0, 1))]
    if att and (att != expected or att_res != [r for r in blocks if att_res[0] <= r <= att_res[-1]]):
        raise ConvertError(f"{source}: attention layers {att} are not every layer of a contiguous range "
                           "of resolutions")
    if h["norm"] != "layer":
        raise ConvertError(f"{source}: attention norm {h['norm']!r} is not supported (ganjax: 'layer')")
    if att and not h["use_pos"]:
        raise ConvertError(f"{source}: use_pos=False is not supported (ganjax always uses position encodings)")

    arch_g = "resnet" if f"synthesis.b{resolution}.skip.weight" in g else "skip"
    model = {
        "resolution": resolution,
        "num_channels": _shape(g, f"synthesis.b{resolution}.torgb.weight", source)[0],
        "architecture_g": arch_g,
        "channel_base": channel_base,
        "channel_max": channel_max,
        "z_dim": z_dim,
        "w_dim": w_dim,
        "num_local": num_local,
        "mapping_layers": layers,
        "mapping_resnet": mapping_resnet,
        "mapping_lrmul": float(h["mapping_lrmul"]),
        "mapping_norm": h.get("mapping_norm", "joint"),
        "mapping_attention": mapping_attention,
        "global_modulation": bool(h["global_modulation"]),
        "attention": "official" if att else "none",
        "heads": int(heads),
        "kmeans_iters": int(h["kmeans_iters"]),
        "integration": str(h["integration"]),
        "attention_dropout": float(h["attention_dropout"]),
        "conv_last": f"synthesis.b{resolution}.conv_last.weight" in g,
    }
    if att:
        model["attention_start_res"], model["attention_end_res"] = att_res[0], att_res[-1]
    if d is not None:
        mbstd_in = _shape(d, "b4.conv.weight", source)[1] - channels[4]
        model["mbstd_channels"] = int(mbstd_in)
        model["mbstd_group"] = int(h["mbstd_group"])
        model["architecture_d"] = "resnet"
        if f"b{resolution}.skip.weight" not in d:
            raise ConvertError(f"{source}: only the resnet discriminator is supported (no b{resolution}.skip)")
    return model


def torch_hints(G, D):
    """Settings recorded in a reference PyTorch pickle's module attributes (TorchModule stand-ins)."""
    hints = {"mapping_norm": "joint"}
    layers = G.find("SynthesisLayer")
    if layers:
        hints["global_modulation"] = bool(next(iter(layers.values())).attr("style", True))
    att = G.find("TransformerLayer")
    syn_att = [m for p, m in att.items() if p.startswith("synthesis.")]
    if syn_att:
        t = syn_att[0]
        hints.update(kmeans_iters=t.attr("kmeans_iters"), integration=t.attr("integration"), norm=t.attr("norm"))
        drop = t.submodules().get("att_dp")
        if drop is not None and drop.attr("p") is not None:
            hints["attention_dropout"] = 2 * float(drop.attr("p"))  # the reference halves it (applied twice)
    fc = G.find("FullyConnectedLayer").get("mapping.global_mlp.l0.fc0")
    if fc is not None and fc.attr("b_gain") is not None:
        hints["mapping_lrmul"] = float(fc.attr("b_gain"))
    if layers:
        hints["use_pos"] = bool(next(iter(layers.values())).attr("use_pos", True))
    if D is not None:
        mb = D.find("MinibatchStdLayer")
        if mb:
            hints["mbstd_group"] = next(iter(mb.values())).attr("group_size")
    mapping = G.submodules().get("mapping")
    if mapping is not None and mapping.attr("normalize_global") is False:
        raise ConvertError("PyTorch pickle with normalize_global=False (a TF checkpoint converted by the "
                           "reference loader): convert the original TF pickle instead")
    return hints


def tf_hints(G, D):
    """Settings from a TF pickle's static kwargs (names as in the TF version's networks)."""
    kw = G.static_kwargs
    hints = {"mapping_norm": "component"}
    for ours, theirs in (("global_modulation", "style"), ("mapping_lrmul", "mapping_lrmul"),
                         ("integration", "integration"), ("norm", "norm"), ("kmeans_iters", "kmeans_iters"),
                         ("attention_dropout", "attention_dropout"), ("use_pos", "use_pos")):
        if theirs in kw:
            hints[ours] = kw[theirs]
    hints.setdefault("global_modulation", True)  # the TF version's default (--style)
    if D is not None and "mbstd_group_size" in D.static_kwargs:
        hints["mbstd_group"] = D.static_kwargs["mbstd_group_size"]
    return hints
