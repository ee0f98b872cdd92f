"""The training loop end to end on the embedded dataset (16x16): outputs in the workdir, TensorBoard
events readable by tensorboard, the D loss falls, the skip limit stops a run."""

import json
import os
import re
import types

import jax
import numpy as np
import pytest

from ganjax import data
from ganjax.config import base_config
from ganjax.models import ModelConfig
from ganjax.train import loop
from ganjax.train.cost import CostMeter, train_flops_per_image
from ganjax.train.length import RunLength
from ganjax.train.summary import MetricWriter


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """Both tests compile the same step; a persistent cache lets the second reuse the first's programs."""
    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def run_config(tmp_path, steps):
    c = base_config()
    m = c.model
    m.resolution, m.channel_base, m.channel_max = 16, 256, 16
    m.num_local, m.z_dim, m.w_dim = 2, 8, 8
    m.mapping_layers, m.attention_end_res = 1, 8
    d = c.data
    d.dataset, d.num_images, d.data_dir = "shapes", 256, str(tmp_path / "tfds")
    t = c.train
    t.batch_size, t.total_kimg = 8, steps * 8 / 1000
    t.r1_gamma, t.r1_interval = 0.1, 4
    t.ema_kimg, t.ema_rampup = 0.05, 0.0
    t.log_every, t.sample_every_kimg, t.sample_grid = 5, 0.16, 4
    c.checkpoint.every_kimg = 1.0
    c.parallel.strategy = "dp"  # over the 8 test devices, one image each
    return c


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
def test_short_run_learns_and_writes_the_workdir(tmp_path, compile_cache, capsys):
    c = run_config(tmp_path, steps=40)
    workdir = tmp_path / "run"
    final = loop.train(c, str(workdir))

    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["batch_size"] == 8 and saved["model"]["resolution"] == 16
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 15, 20, 25, 30, 35, 40]
    for key in ("G/loss", "D/loss", "D/scores_real", "D/scores_fake", "grad_norm/g_main", "grad_norm/d_main",
                "lr/g", "lr/d", "img_per_sec", "sec_per_kimg", "step_time", "data_wait_share", "kimg",
                "compute/pflops", "compute/device_seconds"):
        assert all(np.isfinite(x[key]) for x in lines), key
    # Cumulative compute: analytic FLOPs of the images seen, and wall time x the 8 devices.
    per_image = train_flops_per_image(ModelConfig.from_config(c.model), c.train)
    assert lines[-1]["compute/pflops"] == pytest.approx(40 * 8 * per_image / 1e15)
    seconds = [x["compute/device_seconds"] for x in lines]
    assert all(b > a for a, b in zip(seconds, seconds[1:]))
    # Compiling holds the devices too: the meter counts it, the rate does not.
    # The first window's steps 0 (R1) and 1 (plain) are their programs' first runs: timed apart, not in the rate.
    trained = [3] + [5] * (len(lines) - 1)
    assert seconds[-1] == pytest.approx(8 * sum(x["step_time"] * n + x["first_run_time"] + x["compile_time"]
                                                for x, n in zip(lines, trained)), rel=1e-6)
    assert lines[0]["compile_time"] > 0 and lines[-1]["compile_time"] == 0
    assert lines[0]["first_run_time"] > 0 and all(x["first_run_time"] == 0 for x in lines[1:])
    # The step-0 grid compiles G_ema's sampling programs inside the first window: its seconds are compile time.
    grid = re.search(r"compiled the sample grid's programs in ([0-9.]+) s", capsys.readouterr().out)
    assert grid and lines[0]["compile_time"] >= float(grid.group(1)) - 0.05
    assert lines[-1]["kimg"] == pytest.approx(0.32)
    assert lines[-1]["lr/d"] == pytest.approx(0.002 * 4 / 5)
    assert any("D/r1_penalty" in x for x in lines)
    assert sum(x["skipped"] for x in lines) == 0
    # The discriminator learns to tell the scenes from the untrained generator's output.
    assert np.mean([x["D/loss"] for x in lines[-2:]]) < lines[0]["D/loss"] - 0.05, [x["D/loss"] for x in lines]
    assert final["kimg"] == pytest.approx(0.32)

    samples = sorted(os.listdir(workdir / "samples"))
    kimgs = ("000000.000", "000000.160", "000000.320")
    assert samples == ([f"attention{k}.png" for k in kimgs] + [f"fakes{k}.png" for k in kimgs] + ["reals.png"])
    # tensorboard's own reader (the legacy loader yields the events as written, without its migration of
    # simple values and images into tensors).
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    events = [f for f in os.listdir(workdir / "tb") if "tfevents" in f]
    assert len(events) == 1
    scalars, images = {}, 0
    for event in LegacyEventFileLoader(str(workdir / "tb" / events[0])).Load():
        for v in event.summary.value:
            if v.HasField("image"):
                images += 1
                assert v.image.encoded_image_string.startswith(b"\x89PNG")
            elif v.HasField("simple_value"):
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    assert [s for s, _ in scalars["D/loss"]] == [x["step"] for x in lines]
    np.testing.assert_allclose([v for _, v in scalars["D/loss"]], [x["D/loss"] for x in lines], rtol=1e-6)
    assert images >= 2
    assert (workdir / "checkpoints").is_dir()


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
def test_consecutive_non_finite_steps_stop_the_run(tmp_path, compile_cache, monkeypatch):
    make_loader = data.make_loader

    class Poisoned:
        """The real loader, but every batch from the 3rd on is NaN."""

        def __init__(self, inner):
            self.inner, self.count = inner, 0

        def __next__(self):
            self.count += 1
            batch = next(self.inner)
            return batch * np.nan if self.count > 2 else batch

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(data, "make_loader", lambda *a, **k: Poisoned(make_loader(*a, **k)))
    c = run_config(tmp_path, steps=40)
    c.train.max_consecutive_skips = 3
    with pytest.raises(loop.TrainingStopped, match=r"3 consecutive iterations had a non-finite"):
        loop.train(c, str(tmp_path / "run"))


class _StepScore:
    """Stands in for PeriodicEvaluation (no Inception here): a 'fid' that names the step it scored."""

    def __init__(self, config, G, mesh):
        del config, G, mesh
        self.stop = None

    def __call__(self, state):
        return {"fid": float(jax.device_get(state.step))}


class _Interrupted(Exception):
    pass


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
def test_a_compute_budget_run_stops_at_its_budget_and_resumes_to_the_same_end(tmp_path, compile_cache, monkeypatch):
    monkeypatch.setattr(loop, "PeriodicEvaluation", _StepScore)
    c = run_config(tmp_path, steps=1)
    t = c.train
    t.r1_interval = 0  # one step program to compile
    one_step = t.batch_size * train_flops_per_image(ModelConfig.from_config(c.model), t) / 1e15
    t.total_kimg, t.total_pflops = 0.0, 5.5 * one_step  # the 6th step reaches it
    c.eval.at_fractions = "0.5,1"  # 2.75 steps -> step 3; step 6
    c.checkpoint.every_kimg = 0.008  # every step, so the interrupted run leaves step 2
    runs = {}
    for name in ("whole", "resumed"):
        workdir = str(tmp_path / name)
        if name == "resumed":
            def interrupt(step, state, metrics):
                if step == 3:
                    raise _Interrupted
            with pytest.raises(_Interrupted):
                loop.train(c, workdir, hooks=(interrupt,))
        final = loop.train(c, workdir)
        records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()]
        runs[name] = final, records
    for name, (final, records) in runs.items():
        assert records[-1]["step"] == 6, name
        assert records[-1]["compute/pflops"] == pytest.approx(6 * one_step, rel=1e-9)
        assert records[-1]["compute/pflops"] >= t.total_pflops > 5 * one_step
        assert [(r["step"], r["fid"]) for r in records if "fid" in r] == [(3, 3.0), (6, 6.0)], name
    a, b = (runs[k][0] for k in runs)
    assert a["D/loss"] == b["D/loss"] and a["G/loss"] == b["G/loss"]  # the resume continued exactly


class _Clock:
    """time.time for the loop module: moves only when the test says."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_first_log_line_rate_excludes_the_step_compiles_and_the_first_grid(tmp_path, monkeypatch, capsys):
    """A window of 5 steps: 12 s waiting on the step compile, 3 s on the first sample grid (G_ema's programs
    compile there), 1.25 s of steps. The rate and ETA count the steps; compile_time holds the 15 s; the meter all.
    The clock's steps are exact in binary, so the figures are exact."""
    clock = _Clock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=clock))
    c = run_config(tmp_path, steps=40)
    meter = CostMeter(ModelConfig.from_config(c.model), c.train, num_devices=8)
    window = loop._LogWindow(c, meter, MetricWriter(str(tmp_path / "run")), [], RunLength(c), is_main=True)
    clock.now += 3.0
    window.on_first_grid(3.0)
    clock.now += 12.0
    window.on_compiled("main", 12.0, waited=12.0)
    for _ in range(5):
        clock.now += 0.25
        window.add({"G/loss": 1.0, "D/loss": 1.0, "skipped": 0.0})
    line = window.log(5, {})
    assert line["compile_time"] == 15.0 and line["step_time"] == 0.25
    assert line["img_per_sec"] == 5 * 8 / 1.25
    assert line["compute/device_seconds"] == 8 * 16.25
    out = capsys.readouterr().out
    assert "compiled the sample grid's programs in 3.0 s (with the first grid)" in out
    assert "32.0 img/s" in out and "ETA 0m08s" in out  # 35 steps left at 0.25 s
    # The next window has no compile in it.
    for _ in range(5):
        clock.now += 0.5
        window.add({"G/loss": 1.0, "D/loss": 1.0, "skipped": 0.0})
    line = window.log(10, {})
    assert line["compile_time"] == 0 and line["step_time"] == 0.5
    assert line["compute/device_seconds"] == 8 * (16.25 + 2.5)


def test_a_programs_first_run_is_left_out_of_the_rate(tmp_path, monkeypatch, capsys):
    """A window of 5 steps whose first two were the R1 and plain programs' first runs (1.5 s and 1 s, timed by
    the step): the rate is the other 3 steps' (0.25 s each); first_run_time holds the 2.5 s; the meter counts
    all. A window of first runs alone (log_every 1) keeps its own rate. Exact in binary, as above."""
    clock = _Clock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=clock))
    c = run_config(tmp_path, steps=40)
    meter = CostMeter(ModelConfig.from_config(c.model), c.train, num_devices=8)
    window = loop._LogWindow(c, meter, MetricWriter(str(tmp_path / "run")), [], RunLength(c), is_main=True)
    for seconds in (1.5, 1.0):
        clock.now += seconds
        window.on_first_run("r1" if seconds > 1 else "plain", seconds)
        window.add({"G/loss": 1.0, "D/loss": 1.0, "skipped": 0.0})
    for _ in range(3):
        clock.now += 0.25
        window.add({"G/loss": 1.0, "D/loss": 1.0, "skipped": 0.0})
    line = window.log(5, {})
    assert line["first_run_time"] == 2.5 and line["step_time"] == 0.25 and line["img_per_sec"] == 32.0
    assert line["compute/device_seconds"] == 8 * 3.25
    assert "32.0 img/s" in capsys.readouterr().out
    clock.now += 2.0
    window.on_first_run("plain", 2.0)
    window.add({"G/loss": 1.0, "D/loss": 1.0, "skipped": 0.0})
    line = window.log(6, {})
    assert line["first_run_time"] == 0 and line["step_time"] == 2.0 and line["img_per_sec"] == 4.0
