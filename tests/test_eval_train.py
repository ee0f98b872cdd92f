"""Periodic evaluation inside a tiny training run: the FID is logged (metrics.jsonl, TensorBoard) with its
N, the Checkpointer keeps the best-FID step, and TensorBoard's own event reader reads the sample and
attention-overlay images back. A cheap stand-in replaces the Inception network (tests/test_eval.py)."""

import io
import json

import numpy as np
import PIL.Image
import pytest

from ganjax import evaluate, viz
from ganjax.checkpoint import Checkpointer
from ganjax.metrics import inception
from ganjax.train import loop
from test_eval import _standin_features
from test_train_loop import run_config


@pytest.mark.slow  # a training run (~170 CPU-seconds: step, G_ema and extractor compiles)
def test_periodic_fid_is_logged_and_feeds_the_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "features", _standin_features)
    monkeypatch.setattr(evaluate, "load_inception_params", lambda path: {"scale": 2.0})
    c = run_config(tmp_path, steps=6)  # 16x16, 2 local latents, batch 8, one device
    c.train.log_every, c.train.sample_every_kimg, c.train.sample_grid = 100, 0.024, 4
    c.checkpoint.every_kimg = 1.0  # no interval saves in 6 steps: the saves below come from the FIDs
    c.eval.every_kimg, c.eval.num_images, c.eval.batch_size, c.eval.metrics = 0.024, 16, 8, "fid,kid"
    workdir = tmp_path / "run"
    loop.train(c, str(workdir))

    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "fid" in x]
    assert [x["step"] for x in evals] == [3, 6]  # every 3 steps (24 images); 6 is also the last step
    for x in evals:
        assert x["eval/num_images"] == 16 and np.isfinite(x["fid"]) and x["fid"] > 0 and np.isfinite(x["kid"])
    assert evals[0]["fid"] != evals[1]["fid"]

    ck = Checkpointer(str(workdir), c, None)
    assert ck.all_steps() == [3, 6]
    assert ck.best_step() == min(evals, key=lambda x: x["fid"])["step"]
    ck.close()

    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(workdir / "tb"), size_guidance={"images": 0, "scalars": 0,
                                                                              "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    fid_events = acc.Scalars("fid") if "fid" in tags["scalars"] else acc.Tensors("fid")
    assert [e.step for e in fid_events] == [3, 6]
    attention = acc.Images("samples/attention")
    assert [e.step for e in attention] == [0, 3, 6]
    layers = 3  # attention at 4 (conv1) and 8 (conv0, conv1)
    picture = np.asarray(PIL.Image.open(io.BytesIO(attention[-1].encoded_image_string)))
    assert picture.shape == (4 * 16, (1 + layers) * 16, 3)
    palette = viz.latent_palette(2).astype(float)
    # the overlay columns are blends of the image with one of the 2 latent colours at every pixel
    image = picture[:, :16].astype(float)
    for col in range(1, 1 + layers):
        blend = picture[:, col * 16:(col + 1) * 16].astype(float)
        candidates = [np.abs(blend - np.rint(0.4 * image + 0.6 * colour)).max(axis=-1) for colour in palette]
        assert (np.minimum(*candidates) <= 1).all()
    fakes = acc.Images("samples/fakes")
    assert [e.step for e in fakes] == [0, 3, 6]
    assert acc.Images("samples/fakes")[0].width == 2 * 16


@pytest.mark.slow  # three short runs; the step, G_ema and extractor programs load from the session's cache
def test_sigterm_the_step_before_an_evaluation_saves_without_it_and_resumes_exactly(tmp_path, monkeypatch,
                                                                                      capsys):
    """Preemption first: SIGTERM during step 2, the step before a periodic FID and a sample grid (both due at
    3). Step 3 runs, is saved and committed, and the run returns without the FID or the grid; the resumed run
    (R1 is lazy, every 4th step: the restart crosses step 4's) ends bit for bit where an uninterrupted run does,
    parameters, optimizer state and losses, and its FID at step 6 is the uninterrupted run's."""
    import os
    import signal

    import jax

    from ganjax import parallel
    from ganjax.train import setup

    monkeypatch.setattr(inception, "features", _standin_features)
    monkeypatch.setattr(evaluate, "load_inception_params", lambda path: {"scale": 2.0})
    c = run_config(tmp_path, steps=6)  # r1_interval 4
    c.train.log_every, c.train.sample_every_kimg, c.train.sample_grid = 1, 0.024, 4
    c.checkpoint.every_kimg = 1.0
    c.eval.every_kimg, c.eval.num_images, c.eval.batch_size, c.eval.metrics = 0.024, 16, 8, "fid"

    def preempt(step, state, metrics):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the Checkpointer's handler notes it; the loop goes on

    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    capsys.readouterr()
    loop.train(c, str(stopped), hooks=[preempt])
    out = capsys.readouterr().out
    assert "preemption: saved step 3 (" in out and "s after the notice); exiting" in out
    lines = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and not any("fid" in x for x in lines)  # no evaluation
    assert Checkpointer(str(stopped), c, None).all_steps() == [3]
    assert sorted(p.name for p in (stopped / "samples").glob("fakes*.png")) == [f"fakes{0:010.3f}.png"]  # step 0 only

    loop.train(c, str(stopped))  # the resume: steps 4-6
    loop.train(c, str(whole))
    states = []
    for workdir in (stopped, whole):
        mesh = parallel.make_mesh(c)
        ck = Checkpointer(str(workdir), c, mesh)
        state, extras = ck.restore(setup.build(c, mesh).abstract_state(), step=6)
        ck.close()
        states.append((jax.tree.map(np.asarray, state), extras["metrics_history"]))
    (resumed, resumed_history), (reference, reference_history) = states
    for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(reference)[0], jax.tree.leaves(resumed),
                                 strict=True):
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
    keys = ("step", "G/loss", "D/loss", "D/r1_penalty")
    assert [[h.get(k) for k in keys] for h in resumed_history] == [[h.get(k) for k in keys] for h in reference_history]
    assert [h["step"] for h in reference_history if "D/r1_penalty" in h] == [1, 5]  # R1 at steps 0 and 4
    fids = [{h["step"]: h["fid"] for h in history if "fid" in h} for history in (resumed_history, reference_history)]
    assert list(fids[0]) == [6] and list(fids[1]) == [3, 6]  # the preempted run's FID at 3 never ran
    assert fids[0][6] == fids[1][6]
