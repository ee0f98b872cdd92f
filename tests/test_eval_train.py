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
