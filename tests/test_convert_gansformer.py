"""GANsformer checkpoint conversion: synthetic checkpoints in each format's documented naming.

The names and shapes below follow the reference's public code (dorarad/gansformer): the PyTorch version's
state_dict names (pytorch_version/training/networks.py) and the TF variable names listed in
pytorch_version/loader.py. Values are random, so a parameter that lands in the wrong place, or with the
wrong layout, is caught. Numerical parity with the reference itself: tests/test_convert_authors.py, on
snapshots made by the authors' code.
"""

import collections
import contextlib
import os
import pickle
import sys
import types

import numpy as np
import pytest

from ganjax.convert import derived, gansformer
from ganjax.convert.unpickle import ConvertError

RES, CH, T, DIM = 16, 16, 2, 8  # resolution, channels (channel_max), local latents, z/w dim
ATT_RES = (4, 8)  # attention layers at 4^2 and 8^2 (the reference's end_res = 4 in log2)


def torch_generator_shapes(mapping_attention=True, conv_last=True):
    """{PyTorch state_dict name: shape} of the reference Generator (resnet, kmeans attention, use_pos)."""
    s = {"pos": (T, DIM), "mapping.w_avg": (DIM,)}
    for mlp in ("global_mlp", "mlp"):
        for i in range(4):
            for j in range(2):
                s[f"mapping.{mlp}.l{i}.fc{j}.weight"], s[f"mapping.{mlp}.l{i}.fc{j}.bias"] = (DIM, DIM), (DIM,)
        s[f"mapping.{mlp}.out_layer.weight"], s[f"mapping.{mlp}.out_layer.bias"] = (DIM, DIM), (DIM,)
    if mapping_attention:
        for i in range(4):
            for p in ("to_queries", "to_keys", "to_values", "from_pos_map", "to_pos_map", "modulation"):
                s[f"mapping.mlp.sa{i}.{p}.weight"], s[f"mapping.mlp.sa{i}.{p}.bias"] = (DIM, DIM), (DIM,)
    s["synthesis.b4.const"] = (CH, 4, 4)
    for r in (4, 8, 16):
        s[f"synthesis.b{r}.resample_kernel"] = (4, 4)
        for i in ((1,) if r == 4 else (0, 1)):
            p = f"synthesis.b{r}.conv{i}"
            s.update({f"{p}.weight": (CH, CH, 3, 3), f"{p}.noise_strength": (), f"{p}.resample_kernel": (4, 4),
                      f"{p}.noise_const": (r, r), f"{p}.affine.weight": (CH, DIM), f"{p}.affine.bias": (CH,),
                      f"{p}.biasAct.bias": (CH,)})
            if r in ATT_RES:
                s[f"{p}.grid_pos"] = (r, r, DIM)
                t = f"{p}.transformer"
                s.update({f"{t}.att_weight": (1, 1, 2 * CH), f"{t}.centroids": (1, 1, T, 2 * CH)})
                for q, fan_in in (("to_queries", CH), ("to_keys", DIM), ("to_values", DIM),
                                  ("from_pos_map", DIM), ("to_pos_map", DIM), ("modulation", CH)):
                    s[f"{t}.{q}.weight"], s[f"{t}.{q}.bias"] = (CH, fan_in), (CH,)
        if r > 4:
            s[f"synthesis.b{r}.skip.weight"], s[f"synthesis.b{r}.skip.resample_kernel"] = (CH, CH, 1, 1), (4, 4)
    p = f"synthesis.b{RES}"
    s.update({f"{p}.torgb.weight": (3, CH, 1, 1), f"{p}.torgb.affine.weight": (CH, DIM),
              f"{p}.torgb.affine.bias": (CH,), f"{p}.torgb.biasAct.bias": (3,)})
    if conv_last:
        s.update({f"{p}.conv_last.weight": (CH, CH, 3, 3), f"{p}.conv_last.resample_kernel": (4, 4),
                  f"{p}.conv_last.affine.weight": (CH, DIM), f"{p}.conv_last.affine.bias": (CH,)})
    return s


def torch_discriminator_shapes():
    s = {f"b{RES}.fromrgb.weight": (CH, 3, 1, 1), f"b{RES}.fromrgb.biasAct.bias": (CH,),
         f"b{RES}.fromrgb.resample_kernel": (4, 4), "b4.conv.resample_kernel": (4, 4)}
    for r in (16, 8):
        s.update({f"b{r}.resample_kernel": (4, 4), f"b{r}.conv0.weight": (CH, CH, 3, 3),
                  f"b{r}.conv0.biasAct.bias": (CH,), f"b{r}.conv0.resample_kernel": (4, 4),
                  f"b{r}.conv1.weight": (CH, CH, 3, 3), f"b{r}.conv1.biasAct.bias": (CH,),
                  f"b{r}.conv1.resample_kernel": (4, 4), f"b{r}.skip.weight": (CH, CH, 1, 1),
                  f"b{r}.skip.resample_kernel": (4, 4)})
    s.update({"b4.conv.weight": (CH, CH + 1, 3, 3), "b4.conv.biasAct.bias": (CH,), "b4.fc.weight": (CH, CH * 16),
              "b4.fc.bias": (CH,), "b4.out.weight": (1, CH), "b4.out.bias": (1,)})
    return s


def tf_generator_shapes():
    """{TF variable name: shape} of the TF G/Gs network (names as listed in the reference's loader.py)."""
    s = {"ltnt_emb/emb": (T, DIM), "dlatent_avg": (DIM,)}
    for g in ("", "global/"):
        for i in range(4):
            for j in range(2):
                s[f"mapping/{g}Dense{i}_{j}/weight"], s[f"mapping/{g}Dense{i}_{j}/bias"] = (DIM, DIM), (DIM,)
        s[f"mapping/{g}Dense3/weight"], s[f"mapping/{g}Dense3/bias"] = (DIM, DIM), (DIM,)
    for i in range(4):
        for q in ("query", "key", "value", "from_pos", "to_pos", "out"):
            s[f"mapping/AttLayer_{i}/weight_{q}"], s[f"mapping/AttLayer_{i}/bias_{q}"] = (DIM, DIM), (DIM,)
    s["synthesis/4x4/Const/const"] = (1, CH, 4, 4)
    n = 0
    for r in (4, 8, 16):
        for scope in (["Conv"] if r == 4 else ["Conv0_up", "Conv1"]):
            p = f"synthesis/{r}x{r}/{scope}"
            s.update({f"{p}/weight": (3, 3, CH, CH), f"{p}/bias": (CH,), f"{p}/noise_strength": (),
                      f"{p}/mod_weight": (DIM, CH), f"{p}/mod_bias": (CH,), f"synthesis/noise{n}": (1, 1, r, r)})
            n += 1
            if r in ATT_RES:
                a = f"{p}/AttLayer_l2n"
                s.update({f"{a}/toasgn_init": (1, 1, T, 2 * CH), f"{a}/iter_0/st_weights": (1, 1, 2 * CH)})
                for q, fan_in in (("query", CH), ("key", DIM), ("value", DIM), ("from_pos", DIM),
                                  ("to_pos", DIM), ("out", CH)):
                    s[f"{a}/weight_{q}"], s[f"{a}/bias_{q}"] = (fan_in, CH), (CH,)
        if r > 4:
            s[f"synthesis/{r}x{r}/Skip/weight"] = (1, 1, CH, CH)
    p = f"synthesis/{RES}x{RES}/ToRGB"
    s.update({f"{p}/weight": (1, 1, CH, 3), f"{p}/bias": (3,), f"{p}/mod_weight": (DIM, CH), f"{p}/mod_bias": (CH,),
              f"{p}/extraLayer/weight": (3, 3, CH, CH), f"{p}/extraLayer/mod_weight": (DIM, CH),
              f"{p}/extraLayer/mod_bias": (CH,)})
    return s


def tf_discriminator_shapes():
    s = {f"{RES}x{RES}/FromRGB/weight": (1, 1, 3, CH), f"{RES}x{RES}/FromRGB/bias": (CH,)}
    for r in (16, 8):
        s.update({f"{r}x{r}/Conv0/weight": (3, 3, CH, CH), f"{r}x{r}/Conv0/bias": (CH,),
                  f"{r}x{r}/Conv1_down/weight": (3, 3, CH, CH), f"{r}x{r}/Conv1_down/bias": (CH,),
                  f"{r}x{r}/Skip/weight": (1, 1, CH, CH)})
    s.update({"4x4/Conv/weight": (3, 3, CH + 1, CH), "4x4/Conv/bias": (CH,), "4x4/Dense0/weight": (CH * 16, CH),
              "4x4/Dense0/bias": (CH,), "Output/weight": (CH, 1), "Output/bias": (1,)})
    return s


def random_tensors(shapes, seed):
    """Random values, except the buffers ganjax recomputes, which hold the values the reference stores
    (a converter refuses others: tests/test_convert_authors.py)."""
    rng = np.random.default_rng(seed)
    return {k: derived.expected(k, s)[0] if derived.DERIVED.fullmatch(k) else rng.standard_normal(s).astype(np.float32)
            for k, s in shapes.items()}


def leaf(tree, path):
    for p in path.split("/"):
        tree = tree[p]
    return np.asarray(tree)


def fingerprints(arrays):
    """Multiset of value fingerprints (sorted values): equal multisets <=> each array landed exactly once."""
    return collections.Counter(np.sort(np.asarray(a, np.float32).ravel()).round(6).tobytes() for a in arrays)


def flat_leaves(tree):
    out = []
    for v in tree.values():
        out += flat_leaves(v) if isinstance(v, dict) else [v]
    return out


# ---- PyTorch state dicts -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_file(tmp_path_factory):
    torch = pytest.importorskip("torch")
    g = random_tensors(torch_generator_shapes(), 0)
    d = random_tensors(torch_discriminator_shapes(), 1)
    path = tmp_path_factory.mktemp("src") / "state_dicts.pt"
    torch.save({"G": {k: torch.from_numpy(v) for k, v in g.items()},
                "D": {k: torch.from_numpy(v) for k, v in d.items()}}, str(path))
    return str(path), g, d


def test_torch_state_dict_inferred_config(torch_file):
    path, _, _ = torch_file
    config, _ = gansformer.build_variables(gansformer.read_source(path, global_modulation=True), path)
    m = config.model
    assert (m.resolution, m.channel_max, m.num_local, m.z_dim, m.w_dim, m.num_channels) == (RES, CH, T, DIM, DIM, 3)
    assert min(m.channel_base // r for r in (4, 8, 16)) >= CH  # every block at channel_max
    assert (m.mapping_layers, m.mapping_attention, m.mapping_norm, m.global_modulation) == (4, True, "joint", True)
    assert (m.attention, m.attention_start_res, m.attention_end_res, m.heads) == ("official", 4, 8, 1)
    assert (m.conv_last, m.mbstd_channels, m.architecture_g) == (True, 1, "resnet")


def test_torch_state_dict_every_parameter_lands(torch_file):
    path, g, d = torch_file
    _, v = gansformer.build_variables(gansformer.read_source(path, global_modulation=True), path)
    gp, gb, dp = v["g_ema"]["params"], v["g_ema"]["buffers"], v["d"]
    # Each rule kind, with its layout transform.
    np.testing.assert_array_equal(leaf(gp, "pos"), g["pos"])
    np.testing.assert_array_equal(leaf(gb, "mapping_network/w_avg"), g["mapping.w_avg"])
    np.testing.assert_array_equal(leaf(gp, "mapping_network/global_mlp/l2/fc1/weight"),
                                  g["mapping.global_mlp.l2.fc1.weight"].T)
    np.testing.assert_array_equal(leaf(gp, "mapping_network/mlp/sa3/to_pos_map/bias"), g["mapping.mlp.sa3.to_pos_map.bias"])
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b4/const"), g["synthesis.b4.const"].transpose(1, 2, 0))
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b8/conv0/weight"),
                                  g["synthesis.b8.conv0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b8/conv1/affine/weight"),
                                  g["synthesis.b8.conv1.affine.weight"].T)
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b8/conv1/transformer/to_values/weight"),
                                  g["synthesis.b8.conv1.transformer.to_values.weight"].T)
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b4/conv1/transformer/centroids"),
                                  g["synthesis.b4.conv1.transformer.centroids"])
    np.testing.assert_array_equal(leaf(gb, "synthesis_network/b16/conv0/noise_const"),
                                  g["synthesis.b16.conv0.noise_const"])
    assert leaf(gp, "synthesis_network/b16/conv1/noise_strength").shape == ()
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b16/conv_last/weight"),
                                  g["synthesis.b16.conv_last.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b16/torgb/bias"), g["synthesis.b16.torgb.biasAct.bias"])
    np.testing.assert_array_equal(leaf(dp, "b16/fromrgb/weight"), d["b16.fromrgb.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(leaf(dp, "b4/out/weight"), d["b4.out.weight"].T)
    # D's epilogue fc: PyTorch input index c*16 + h*4 + w  ->  ganjax input index (h*4 + w)*C + c.
    fc, ref = leaf(dp, "b4/fc/weight"), d["b4.fc.weight"]
    for c, h, w, o in ((0, 0, 0, 0), (5, 1, 3, 7), (CH - 1, 3, 2, CH - 1)):
        assert fc[(h * 4 + w) * CH + c, o] == ref[o, c * 16 + h * 4 + w]
    # Every source tensor landed exactly once (the FIR kernels and grid encodings are computed by ganjax).
    kept = [a for k, a in g.items() if not k.endswith(("resample_kernel", "grid_pos"))]
    assert fingerprints(flat_leaves(gp) + flat_leaves(gb)) == fingerprints(kept)
    assert fingerprints(flat_leaves(dp)) == fingerprints([a for k, a in d.items() if not k.endswith("resample_kernel")])
    # Without a separate G in the file, G and G_ema are the same weights.
    assert v["g"] is v["g_ema"]


def test_bare_state_dict_needs_global_modulation(torch_file):
    path, _, _ = torch_file
    with pytest.raises(ConvertError, match="global modulation"):
        gansformer.build_variables(gansformer.read_source(path), path)


# ---- the reference PyTorch version's network pickle (persistent modules) --------------------------------

@contextlib.contextmanager
def fake_module(name, **attrs):
    """Register `name` (and its parent packages) in sys.modules while pickling objects that claim to live there."""
    parts = name.split(".")
    added = [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) not in sys.modules]
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[name].__dict__.update(attrs)
    try:
        yield
    finally:
        for n in added:
            del sys.modules[n]


def _persistence_function():

    def _reconstruct_persistent_obj(meta):  # never called: ganjax's reader resolves this name itself
        raise AssertionError

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    return _reconstruct_persistent_obj


class _Persistent:
    """Pickles like the reference's @persistent_class modules: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, class_name, params=None, buffers=None, modules=None, **attrs):
        self.meta = dict(type="class", version=6, module_src="raise SystemExit  # never run", class_name=class_name,
                         state=dict(_parameters=collections.OrderedDict(params or {}),
                                    _buffers=collections.OrderedDict(buffers or {}),
                                    _modules=collections.OrderedDict(modules or {}), training=False, **attrs))

    def __reduce__(self):
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,))


def _module_tree(tensors, attrs_for):
    """Nest {dotted name: tensor} into _Persistent modules; attrs_for(path) gives (class name, attributes)."""
    root = {}
    for name, t in tensors.items():
        *mods, leaf_name = name.split(".")
        node = root
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf_name] = t

    def build(node, path):
        params = {k: v for k, v in node.items() if not isinstance(v, dict)}
        subs = {k: build(v, f"{path}.{k}" if path else k) for k, v in node.items() if isinstance(v, dict)}
        cls, attrs = attrs_for(path)
        buffers = {k: params.pop(k) for k in list(params) if k in ("w_avg", "noise_const", "resample_kernel", "grid_pos")}
        return _Persistent(cls, params=params, buffers=buffers, modules=subs, **attrs)

    return build(root, "")


@pytest.fixture(scope="module")
def torch_pickle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    g = random_tensors(torch_generator_shapes(), 2)
    d = random_tensors(torch_discriminator_shapes(), 3)

    def g_attrs(path):
        last = path.split(".")[-1]
        if path == "":
            return "Generator", {}
        if last.startswith("conv") and path.startswith("synthesis"):
            return "SynthesisLayer", {"style": False, "use_pos": True}  # a CLEVR-style generator
        if last == "transformer":
            return "TransformerLayer", {"kmeans_iters": 2, "integration": "mul", "norm": "layer", "num_heads": 1}
        if path == "mapping.global_mlp.l0.fc0":
            return "FullyConnectedLayer", {"b_gain": 0.01}
        return "Module", {}

    def d_attrs(path):
        return ("Discriminator", {}) if path == "" else ("Module", {})

    to_torch = lambda t: {k: torch.nn.Parameter(torch.from_numpy(v), requires_grad=False) for k, v in t.items()}  # noqa: E731
    with fake_module("torch_utils.persistence", _reconstruct_persistent_obj=_persistence_function()):
        G = _module_tree(to_torch(g), g_attrs)
        D = _module_tree(to_torch(d), d_attrs)
        path = tmp_path_factory.mktemp("src") / "network-snapshot.pkl"
        with open(path, "wb") as f:
            pickle.dump({"dataset_args": {"resolution": RES}, "G": G, "D": D, "Gs": G}, f)
    return str(path), g, d


def test_torch_pickle_reads_modules_and_hints(torch_pickle):
    path, g, d = torch_pickle
    config, v = gansformer.build_variables(gansformer.read_source(path), path)
    assert config.model.global_modulation is False  # from SynthesisLayer.style
    assert config.model.kmeans_iters == 2  # from TransformerLayer.kmeans_iters
    np.testing.assert_array_equal(leaf(v["g_ema"]["params"], "synthesis_network/b8/conv0/weight"),
                                  g["synthesis.b8.conv0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(leaf(v["d"], "b8/skip/weight"), d["b8.skip.weight"].transpose(2, 3, 1, 0))
    kept = [a for k, a in g.items() if not k.endswith(("resample_kernel", "grid_pos"))]
    assert fingerprints(flat_leaves(v["g_ema"]["params"]) + flat_leaves(v["g_ema"]["buffers"])) == fingerprints(kept)


# ---- TF pickles (dnnlib Network states) -----------------------------------------------------------------

class _TFNet:
    """Pickles like dnnlib.tflib.network.Network (its __getstate__ fields)."""

    def __init__(self, name, kwargs, variables, components=None):
        self.state = dict(version=4, name=name, static_kwargs=kwargs, components=components or {},
                          build_module_src="raise SystemExit  # never run", build_func_name="G_GANformer",
                          variables=list(variables.items()))

    def __getstate__(self):
        return self.state


# pickle records a class by module and qualified name: make _TFNet claim dnnlib's.
_TFNet.__module__, _TFNet.__qualname__, _TFNet.__name__ = "dnnlib.tflib.network", "Network", "Network"


def write_tf_pickle(path, g_vars, d_vars, **kwargs):
    with fake_module("dnnlib.tflib.network", Network=_TFNet):
        kw = dict(resolution=RES, components_num=T, latent_size=DIM, dlatent_size=DIM, style=True,
                  integration="mul", norm="layer", use_pos=True, mapping_lrmul=0.01, **kwargs)
        split = lambda prefix: {k[len(prefix):]: v for k, v in g_vars.items() if k.startswith(prefix)}  # noqa: E731
        top = {k: v for k, v in g_vars.items() if "/" not in k or k.startswith("ltnt_emb/")}
        G = _TFNet("G", kw, top, {"mapping": _TFNet("G_mapping", kw, split("mapping/")),
                                  "synthesis": _TFNet("G_synthesis", kw, split("synthesis/"))})
        D = _TFNet("D", dict(resolution=RES, mbstd_group_size=4), d_vars)
        with open(path, "wb") as f:
            pickle.dump((G, D, G), f, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.fixture(scope="module")
def tf_file(tmp_path_factory):
    g = random_tensors(tf_generator_shapes(), 4)
    d = random_tensors(tf_discriminator_shapes(), 5)
    path = tmp_path_factory.mktemp("src") / "tf-snapshot.pkl"
    write_tf_pickle(path, g, d)
    return str(path), g, d


def test_tf_pickle_every_parameter_lands(tf_file):
    path, g, d = tf_file
    config, v = gansformer.build_variables(gansformer.read_source(path), path)
    m = config.model
    assert (m.resolution, m.num_local, m.w_dim, m.mapping_norm, m.conv_last) == (RES, T, DIM, "component", True)
    assert (m.attention_start_res, m.attention_end_res, m.global_modulation) == (4, 8, True)
    gp, gb, dp = v["g_ema"]["params"], v["g_ema"]["buffers"], v["d"]
    np.testing.assert_array_equal(leaf(gp, "pos"), g["ltnt_emb/emb"])
    np.testing.assert_array_equal(leaf(gb, "mapping_network/w_avg"), g["dlatent_avg"])
    np.testing.assert_array_equal(leaf(gp, "mapping_network/global_mlp/l1/fc0/weight"), g["mapping/global/Dense1_0/weight"])
    np.testing.assert_array_equal(leaf(gp, "mapping_network/mlp/out_layer/bias"), g["mapping/Dense3/bias"])
    np.testing.assert_array_equal(leaf(gp, "mapping_network/mlp/sa2/modulation/weight"), g["mapping/AttLayer_2/weight_out"])
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b4/const"), g["synthesis/4x4/Const/const"][0].transpose(1, 2, 0))
    # TF runs the up-sampling convs as flipped transposed convs: the kernel is mirrored spatially.
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b8/conv0/weight"),
                                  g["synthesis/8x8/Conv0_up/weight"][::-1, ::-1])
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b16/skip/weight"), g["synthesis/16x16/Skip/weight"])
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b8/conv1/weight"), g["synthesis/8x8/Conv1/weight"])
    # TF adds 1 to the modulation bias at run time; ganjax (like PyTorch) stores it with the 1.
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b8/conv1/affine/bias"), g["synthesis/8x8/Conv1/mod_bias"] + 1)
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b16/conv_last/affine/weight"),
                                  g["synthesis/16x16/ToRGB/extraLayer/mod_weight"])
    # noise<i>: i = 2*log2(res) - 5 + conv index
    np.testing.assert_array_equal(leaf(gb, "synthesis_network/b4/conv1/noise_const"), g["synthesis/noise0"][0, 0])
    np.testing.assert_array_equal(leaf(gb, "synthesis_network/b8/conv0/noise_const"), g["synthesis/noise1"][0, 0])
    np.testing.assert_array_equal(leaf(gb, "synthesis_network/b16/conv1/noise_const"), g["synthesis/noise4"][0, 0])
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b4/conv1/transformer/att_weight"),
                                  g["synthesis/4x4/Conv/AttLayer_l2n/iter_0/st_weights"])
    np.testing.assert_array_equal(leaf(gp, "synthesis_network/b8/conv0/transformer/to_keys/weight"),
                                  g["synthesis/8x8/Conv0_up/AttLayer_l2n/weight_key"])
    np.testing.assert_array_equal(leaf(dp, "b16/conv1/weight"), d["16x16/Conv1_down/weight"])
    fc, ref = leaf(dp, "b4/fc/weight"), d["4x4/Dense0/weight"]  # TF flattens NCHW too
    assert fc[(1 * 4 + 3) * CH + 5, 7] == ref[5 * 16 + 1 * 4 + 3, 7]
    # Every TF variable landed exactly once.
    expected = [a + 1 if k.endswith("mod_bias") else a for k, a in g.items()]
    assert fingerprints(flat_leaves(gp) + flat_leaves(gb)) == fingerprints(expected)
    assert fingerprints(flat_leaves(dp)) == fingerprints(list(d.values()))


def test_convert_writes_a_loadable_workdir(tf_file, tmp_path):
    from ganjax.checkpoint import load_generator

    path, g, _ = tf_file
    out = tmp_path / "converted"
    assert gansformer.convert(path, str(out)) == str(out)
    assert sorted(os.listdir(tmp_path)) == ["converted"]  # no temporary directory left beside it
    G, variables, config = load_generator(str(out))  # what `ganjax sample` / `ganjax eval` read
    assert (config.model.resolution, config.model.num_local, config.model.mapping_norm) == (RES, T, "component")
    np.testing.assert_array_equal(np.asarray(variables["params"]["pos"]), g["ltnt_emb/emb"])
    np.testing.assert_array_equal(np.asarray(variables["buffers"]["synthesis_network"]["b8"]["conv1"]["noise_const"]),
                                  g["synthesis/noise2"][0, 0])
    assert G.cfg.attention == "official" and G.cfg.conv_last


# ---- bad input --------------------------------------------------------------------------------------------

def test_unknown_pickle_format(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ConvertError, match="unknown checkpoint format"):
        gansformer.convert(str(path), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["list.pkl"]


def test_pickle_naming_other_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    with pytest.raises(ConvertError, match="os.system"):
        gansformer.convert(str(path), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["evil.pkl"]


def test_truncated_file(tf_file, tmp_path):
    src, _, _ = tf_file
    path = tmp_path / "truncated.pkl"
    data = open(src, "rb").read()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError, match="truncated"):
        gansformer.convert(str(path), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["truncated.pkl"]


def test_truncated_torch_archive(torch_file, tmp_path):
    src, _, _ = torch_file
    path = tmp_path / "truncated.pt"
    data = open(src, "rb").read()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(ConvertError, match="truncated.pt"):
        gansformer.convert(str(path), str(tmp_path / "out"), global_modulation=True)
    assert sorted(os.listdir(tmp_path)) == ["truncated.pt"]


def test_tf_variable_that_maps_nowhere(tmp_path):
    g = random_tensors({**tf_generator_shapes(), "synthesis/8x8/Conv1/AttLayer_l2n/weight_key2": (CH, CH)}, 6)
    d = random_tensors(tf_discriminator_shapes(), 7)
    path = tmp_path / "extra.pkl"
    write_tf_pickle(path, g, d)
    with pytest.raises(ConvertError, match="synthesis/8x8/Conv1/AttLayer_l2n/weight_key2"):
        gansformer.convert(str(path), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["extra.pkl"]


def test_torch_variable_that_maps_nowhere_or_is_missing(tmp_path):
    torch = pytest.importorskip("torch")
    g = random_tensors(torch_generator_shapes(), 8)
    d = random_tensors(torch_discriminator_shapes(), 9)
    extra = dict(g, **{"synthesis.b8.conv1.transformer.queries2centroids.weight": np.zeros((CH, CH), np.float32)})
    path = tmp_path / "extra.pt"
    torch.save({"G": {k: torch.from_numpy(v) for k, v in extra.items()},
                "D": {k: torch.from_numpy(v) for k, v in d.items()}}, str(path))
    with pytest.raises(ConvertError, match=r"queries2centroids\.weight"):
        gansformer.convert(str(path), str(tmp_path / "out"), global_modulation=True)
    missing = {k: v for k, v in g.items() if k != "synthesis.b8.conv0.noise_strength"}
    path2 = tmp_path / "missing.pt"
    torch.save({"G": {k: torch.from_numpy(v) for k, v in missing.items()},
                "D": {k: torch.from_numpy(v) for k, v in d.items()}}, str(path2))
    with pytest.raises(ConvertError, match="b8/conv0/noise_strength"):
        gansformer.convert(str(path2), str(tmp_path / "out"), global_modulation=True)
    assert sorted(os.listdir(tmp_path)) == ["extra.pt", "missing.pt"]


def test_existing_output_is_not_overwritten(tf_file, tmp_path):
    src, _, _ = tf_file
    (tmp_path / "out").mkdir()
    with pytest.raises(ConvertError, match="already exists"):
        gansformer.convert(src, str(tmp_path / "out"))
