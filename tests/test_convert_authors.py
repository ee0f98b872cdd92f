"""`ganjax convert` on snapshots made by the authors' own code, compared with the outputs their code recorded.

tests/fixtures/authors/ holds, per config, a snapshot pickled by the authors' PyTorch training code
(dorarad/gansformer@3a9efa4, their networks built through their own run_network.py; random weights
perturbed so that no zero-initialised tensor hides an error) and their G_ema / D outputs for fixed
inputs; tests/fixtures/authors/make_fixtures.py made them (not run here: it needs their code and torch).
The reference numbers are theirs, so these tests fail if ganjax's converter or models drift from the
authors' networks. Tolerances are relative to the values' scale, above the float32 rounding of two
implementations of a ~20-layer forward pass (measured on a Zen 4: images and ws up to 2.2e-6 of the range
against 1e-5, attention up to 6.4e-6 against 1e-4, D logits 4.9e-6 of their scale against 5e-5).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganjax.checkpoint import load_generator
from ganjax.convert import gansformer
from ganjax.convert.unpickle import ConvertError
from ganjax.models import ModelConfig, build_models
from ganjax.train.losses import gradient_penalty
from rounding import assert_equal_to_rounding

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "authors")
CONFIGS = ("clevr32", "ffhq64", "stylegan2_32")
# What each fixture must convert to (the authors' run_network.py presets, at small widths).
EXPECTED = {
    "clevr32": dict(resolution=32, num_local=8, w_dim=16, mapping_resnet=True, global_modulation=False,
                    mapping_attention=False, attention="official", attention_start_res=4, attention_end_res=32,
                    architecture_g="resnet", mbstd_group=4),
    "ffhq64": dict(resolution=64, num_local=16, w_dim=16, mapping_resnet=True, global_modulation=True,
                   mapping_attention=True, attention="official", attention_start_res=4, attention_end_res=32,
                   architecture_g="resnet", mbstd_group=4),
    "stylegan2_32": dict(resolution=32, num_local=0, w_dim=32, mapping_resnet=False, mapping_layers=4,
                         global_modulation=True, attention="none", architecture_g="skip", mbstd_group=4),
}
IMAGE_RTOL = 1e-5  # max |diff| / value range, images and ws
# max |diff| / max |logit|: a logit is a small difference of much larger intermediate terms (the perturbed
# weights' activations), so its rounding is larger relative to it; measured worst 4.9e-6 (clevr32, random reals)
LOGIT_RTOL = 5e-5
ATTENTION_ATOL = 1e-4  # attention probabilities
R1_RTOL = 1e-3  # per sample, relative


def _pickle(name):
    return os.path.join(FIXTURES, f"{name}.pkl")


@pytest.fixture(scope="module", params=CONFIGS)
def converted(request, tmp_path_factory):
    """(name, reference outputs, config, G, G_ema variables from the written workdir, D, D params)."""
    name = request.param
    out = gansformer.convert(_pickle(name), str(tmp_path_factory.mktemp(name) / "workdir"))
    G, g_vars, config = load_generator(out)  # what `ganjax sample` / `ganjax eval` read
    config_d, variables = gansformer.build_variables(gansformer.read_source(_pickle(name)), _pickle(name))
    _, D = build_models(ModelConfig.from_config(config_d.model))
    ref = dict(np.load(os.path.join(FIXTURES, f"{name}.npz")))
    return name, ref, config, G, g_vars, D, jax.tree.map(jnp.asarray, variables["d"])


def test_inferred_config(converted):
    name, _, config, *_ = converted
    assert {k: config.model[k] for k in EXPECTED[name]} == EXPECTED[name]


def test_generator_equals_the_authors(converted):
    name, ref, _, G, g, _, _ = converted
    z = jnp.asarray(ref["z"])
    assert_equal_to_rounding(G.apply(g, z, method=G.mapping), ref["ws"], IMAGE_RTOL, f"{name}: ws")
    img, att = G.apply(g, z, noise_mode="const", return_attention=True)
    span = float(ref["img_psi1"].max() - ref["img_psi1"].min())
    np.testing.assert_allclose(img, ref["img_psi1"], rtol=0, atol=IMAGE_RTOL * span, err_msg=f"{name}: psi 1")
    img07 = G.apply(g, z, truncation_psi=0.7, noise_mode="const")
    span = float(ref["img_psi07"].max() - ref["img_psi07"].min())
    np.testing.assert_allclose(img07, ref["img_psi07"], rtol=0, atol=IMAGE_RTOL * span, err_msg=f"{name}: psi 0.7")
    layers = sorted((k for k in ref if k.startswith("attention_")), key=lambda k: int(k.split("_")[1]))
    assert att.shape[2] == len(layers), f"{name}: {att.shape[2]} attention layers, the authors' {len(layers)}"
    for key in layers:  # the authors' [N, T, heads, r, r] at the layer's own resolution; ganjax's upsampled
        want = ref[key]
        f = att.shape[-1] // want.shape[-1]
        got = np.asarray(att[: want.shape[0], :, int(key.split("_")[1])])
        np.testing.assert_allclose(got[..., ::f, ::f], want, rtol=0, atol=ATTENTION_ATOL, err_msg=f"{name}: {key}")
        np.testing.assert_array_equal(np.repeat(np.repeat(got[..., ::f, ::f], f, -2), f, -1), got)


def test_discriminator_and_r1_equal_the_authors(converted):
    name, ref, _, _, _, D, d = converted
    for inputs, key in (("img_psi1", "d_fake"), ("real", "d_real")):
        logits = D.apply({"params": d}, jnp.asarray(ref[inputs]))
        assert_equal_to_rounding(logits, ref[key], LOGIT_RTOL, f"{name}: {key}")
    r1 = gradient_penalty(lambda x: D.apply({"params": d}, x), jnp.asarray(ref["real"]))
    np.testing.assert_allclose(r1, ref["r1"], rtol=R1_RTOL, err_msg=f"{name}: R1 penalty")


def _source(name="clevr32"):
    return gansformer.read_source(_pickle(name))


def test_an_altered_resample_kernel_is_refused():
    source = _source()
    name = "synthesis.b8.conv0.resample_kernel"
    source.g_ema[name] = np.outer([1, 1], [1, 1]).astype(np.float32) / 4
    with pytest.raises(ConvertError, match=rf"{name}.*\[4, 4\]"):
        gansformer.build_variables(source, "x.pkl")
    source = _source()
    source.d["b16.conv1.resample_kernel"] = source.d["b16.conv1.resample_kernel"] * 1.01
    with pytest.raises(ConvertError, match=r"discriminator buffer 'b16.conv1.resample_kernel' differs from the FIR "
                                           r"filter \[1, 3, 3, 1\]"):
        gansformer.build_variables(source, "x.pkl")


def test_other_positional_encodings_are_refused():
    source = _source()
    name = "synthesis.b16.conv1.grid_pos"
    source.g_ema[name] = np.flip(source.g_ema[name], -1).copy()  # e.g. another pos_directions_num's layout
    with pytest.raises(ConvertError, match=rf"generator buffer '{name}' differs from the sinusoidal encoding "
                                           r"\(pos_type 'sinus', pos_directions_num 2"):
        gansformer.build_variables(source, "x.pkl")
    source = _source()
    source.g_ema["synthesis.b16.conv1.pos0"] = np.zeros((16, 8), np.float32)
    with pytest.raises(ConvertError, match=r"'synthesis.b16.conv1.pos0' is a trainable position encoding"):
        gansformer.build_variables(source, "x.pkl")


def test_a_plain_mapping_with_an_odd_depth_is_refused():
    source = _source("stylegan2_32")
    for net in (source.g, source.g_ema):
        for p in ("weight", "bias"):
            del net[f"mapping.global_mlp.l7.{p}"]
    with pytest.raises(ConvertError, match=r"plain mapping network has 7 layers .*\(2 x model.mapping_layers\)"):
        gansformer.build_variables(source, "x.pkl")
