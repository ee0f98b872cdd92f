"""Generator export and load_generator on a tiny GANsformer: G_ema only, every path kind, bad input, CLI."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ganjax.checkpoint import Checkpointer, CheckpointError, export_generator, load_generator
from ganjax.checkpoint.trees import config_to_dict
from ganjax.config import base_config
from ganjax.models import ModelConfig, build_models


def tiny_config(channel_max=16):
    c = base_config()
    m = c.model
    m.resolution, m.channel_base, m.channel_max = 16, 256, channel_max
    m.num_local, m.z_dim, m.w_dim, m.mapping_layers = 2, 8, 8, 1
    m.attention_end_res = 8
    c.train.batch_size = 8
    c.checkpoint.every_kimg = 0.008  # a save every step
    return c


@functools.lru_cache  # one compile of G.init per session (test_sample reuses it)
def _init_tiny(channel_max):
    config = tiny_config(channel_max)
    mc = ModelConfig.from_config(config.model)
    G, _ = build_models(mc)
    keys = {n: jax.random.key(i) for i, n in enumerate(("params", "noise", "dropout", "mixing"))}
    z = jnp.zeros((1, mc.num_latents, mc.z_dim), jnp.float32)
    return G, nn.meta.unbox(jax.jit(G.init)(keys, z))


def init_generator(config):
    return _init_tiny(config.model.channel_max)


def fake_train_state(variables, shift):
    """A train-state-shaped tree whose G (not G_ema) and D differ from G_ema, so mixing them up shows."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    replicate = lambda t: jax.device_put(t, NamedSharding(mesh, P()))  # noqa: E731
    ema = jax.tree.map(lambda x: x + shift, variables)
    return mesh, replicate({
        "g_params": variables["params"], "g_buffers": variables["buffers"],
        "g_ema_params": ema["params"], "g_ema_buffers": ema["buffers"],
        "d_params": {"fc": jnp.ones((4, 4))}, "step": jnp.int32(0),
    })


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir with checkpoints at steps 1 and 2 (G_ema = G + 0.01 and G + 0.02)."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_config()
    G, variables = init_generator(config)
    for step in (1, 2):
        mesh, state = fake_train_state(variables, 0.01 * step)
        ck = Checkpointer(workdir, config, mesh)
        assert ck.maybe_save(step, state)
        ck.close()
    return workdir, config, variables


def assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_load_generator_from_every_path_kind(run):
    workdir, config, variables = run
    latest = jax.tree.map(lambda x: x + 0.02, variables)
    for path in (workdir, os.path.join(workdir, "checkpoints"), os.path.join(workdir, "checkpoints", "2")):
        G, loaded, loaded_config = load_generator(path)
        assert_tree_equal(loaded, latest)  # G_ema of the latest step, not G
        assert loaded_config.model.to_dict() == config.model.to_dict()
        assert {d.id for d in jax.tree.leaves(loaded)[0].devices()} == {jax.local_devices()[0].id}
    _, older, _ = load_generator(workdir, step=1)
    assert_tree_equal(older, jax.tree.map(lambda x: x + 0.01, variables))
    with pytest.raises(CheckpointError, match=r"step 5 not found .*complete steps: \[1, 2\]"):
        load_generator(workdir, step=5)


def test_export_holds_only_g_ema_and_config(run, tmp_path):
    workdir, config, variables = run
    out = export_generator(workdir, str(tmp_path / "G.ckpt"), step=1)
    assert sorted(n for n in os.listdir(out) if os.path.isdir(os.path.join(out, n))) == ["config", "generator"]
    G, loaded, loaded_config = load_generator(out)
    assert_tree_equal(loaded, jax.tree.map(lambda x: x + 0.01, variables))
    assert config_to_dict(loaded_config) == config_to_dict(config)  # JSON form: tuples come back as lists
    with pytest.raises(CheckpointError, match="already exists"):
        export_generator(workdir, out)


def test_bad_sources_are_clear_errors(run, tmp_path):
    workdir, config, variables = run
    with pytest.raises(CheckpointError, match="does not exist"):
        load_generator(str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_generator(str(tmp_path))
    # A run whose config says channel_max=32 but whose weights were made with 16 (a different architecture).
    mesh, state = fake_train_state(variables, 0.0)
    ck = Checkpointer(str(tmp_path / "other"), tiny_config(channel_max=32), mesh)
    ck.maybe_save(1, state)
    ck.close()
    with pytest.raises(CheckpointError, match=r"parameter 'g_ema_params/\S+' has shape \(.*\) float32 in the "
                                              r"checkpoint but \(.*\) float32 in the model"):
        load_generator(str(tmp_path / "other"))


def test_a_damaged_latest_checkpoint_is_named_and_readers_fall_back(run, tmp_path, capsys):
    """Truncated array files in the latest step (a failing disk, a partial copy): reading the workdir names the
    step and an array and reads the previous step, leaving the workdir as it is; the damaged step itself,
    asked for explicitly, is an error with the same naming, not TensorStore's traceback."""
    import shutil

    workdir, config, variables = run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    # The array files of the process (to 8 bytes: a file holds several arrays, and one that lay in a half left
    # whole would still read), not the tree's own nodes, so the error names the array that was read.
    data = os.path.join(copy, "checkpoints", "2", "state", "ocdbt.process_0", "d")
    for name in os.listdir(data):
        with open(os.path.join(data, name), "r+b") as f:
            f.truncate(8)
    _, loaded, _ = load_generator(copy)
    assert_tree_equal(loaded, jax.tree.map(lambda x: x + 0.01, variables))  # step 1's G_ema
    said = capsys.readouterr().err
    assert f"checkpoint {copy}/checkpoints/2 is damaged (array 'g_ema_params." in said
    assert f"reading {copy}/checkpoints/1 instead" in said
    assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == ["1", "2"]  # nothing moved by a reader
    with pytest.raises(CheckpointError, match=r"checkpoints/2 is damaged: array 'g_ema_params\.\S+': .*pick "
                                              r"another step"):
        load_generator(copy, step=2)


def test_cli_export_then_sample(run, tmp_path):
    """`ganjax export` and `ganjax sample` as a user runs them (grid and per-seed PNGs)."""
    workdir, config, variables = run
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    ganjax = [sys.executable, "-m", "ganjax"]
    out = str(tmp_path / "G.ckpt")
    subprocess.run(ganjax + ["export", "--workdir", workdir, "--out", out], check=True, env=env)
    grid, singles = tmp_path / "grid.png", tmp_path / "singles"
    subprocess.run(ganjax + ["sample", "--checkpoint", out, "--seeds", "3,5-6", "--psi", "0.7",
                             "--out", str(grid), "--out-dir", str(singles), "--cols", "3"], check=True, env=env)
    assert sorted(os.listdir(singles)) == ["seed0003.png", "seed0005.png", "seed0006.png"]
    grid_img = np.asarray(PIL.Image.open(grid))
    assert grid_img.shape == (16, 48, 3)
    for i, seed in enumerate((3, 5, 6)):
        single = np.asarray(PIL.Image.open(singles / f"seed{seed:04d}.png"))
        np.testing.assert_array_equal(grid_img[:, 16 * i:16 * (i + 1)], single)
    assert np.abs(grid_img[:, :16].astype(int) - grid_img[:, 16:32]).max() > 0  # different seeds differ
    bad = subprocess.run(ganjax + ["sample", "--checkpoint", workdir, "--seeds", "9-2", "--out", str(grid)],
                         env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "--seeds: '9-2' is not a seed or an increasing range" in bad.stderr
