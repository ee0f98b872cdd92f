"""The training loop: `train(config, workdir)` runs to config.train.total_kimg, resuming from the workdir.

Per step the host only dispatches work: the jitted step runs asynchronously and its metrics stay on the
devices until a log step fetches them all at once (one sync per log_every steps). The one per-step read is
the consecutive-skip counter of the *previous* step, which has finished or nearly so by then, so it does
not drain the dispatch queue.
"""

import json
import math
import os
import shutil
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ganjax import compilation_cache, insight, parallel, sampling, viz
from ganjax.train import setup
from ganjax.train.cost import CostMeter
from ganjax.train.state import adam_hparams
from ganjax.train.summary import MetricWriter


class TrainingStopped(RuntimeError):
    """Too many consecutive non-finite updates; the last checkpoint is intact."""


def _validate(config):
    from ganjax.config import validate  # also runs ModelConfig.validate

    validate(config, num_devices=jax.device_count())


def _config_json(config) -> str:
    from ganjax.checkpoint.trees import config_to_dict

    return json.dumps(config_to_dict(config), indent=2, sort_keys=True)


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _average(pending: list) -> dict:
    """Mean of each metric over the fetched steps that produced it (lazy-phase metrics appear only at
    the steps where their phase ran)."""
    sums, counts = {}, {}
    for m in jax.device_get(pending):
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    out = {k: sums[k] / counts[k] for k in sums}
    if "skipped" in sums:
        out["skipped"] = sums["skipped"]  # a count over the window, not a mean
    return out


class _Sampler:
    """G_ema on seeds 0 .. count - 1 (ganjax/sampling.py's seed scheme; const noise, no truncation), gathered
    for process 0's PNG grids: grid image j is `ganjax sample --seeds j` of the same G_ema."""

    def __init__(self, tr: setup.Training, count: int):
        mc = tr.model_cfg
        self.z, _ = sampling.seed_latents(range(count), mc.num_latents, mc.z_dim)
        shardings = tr.state_shardings
        replicated = parallel.replicated(tr.mesh)
        G = tr.G
        self._fn = jax.jit(
            lambda p, b, z: G.apply({"params": p, "buffers": b}, z, noise_mode="const"),
            in_shardings=(shardings.g_ema_params, shardings.g_ema_buffers, replicated), out_shardings=replicated)

    def __call__(self, state) -> np.ndarray:
        images = self._fn(state.g_ema_params, state.g_ema_buffers, self.z)  # replicated on every device
        return np.asarray(images.addressable_data(0))


def _gather(x) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def train(config, workdir: str, *, fresh: bool = False, hooks=()) -> dict:
    """Train to config.train.total_kimg; returns the last logged metrics.

    Resumes from workdir/checkpoints unless `fresh` (which deletes the workdir's previous checkpoints,
    metrics, TensorBoard events and samples). `hooks`: callables hook(step, state, metrics) run after every
    step (metrics are device arrays); a hook may return a dict of extra metrics to log (e.g. FID).
    Raises TrainingStopped after config.train.max_consecutive_skips non-finite iterations in a row.
    """
    parallel.maybe_initialize_distributed(config)
    _validate(config)
    compilation_cache.enable(config.compilation_cache)
    from ganjax import data
    from ganjax.checkpoint import Checkpointer

    is_main = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        if fresh:
            for name in ("checkpoints", "tb", "samples", "metrics.jsonl"):
                path = os.path.join(workdir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(_config_json(config))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ganjax.train.workdir")

    t = config.train
    mesh = parallel.make_mesh(config)
    tr = setup.build(config, mesh)
    # FID etc. every eval.every_kimg and at the last step (ganjax/evaluate.py). Built here: it loads the
    # Inception weights, so a missing file stops the run before anything else starts.
    if float(config.eval.every_kimg) > 0:
        from ganjax.evaluate import PeriodicEvaluation

        hooks = (*hooks, PeriodicEvaluation(config, tr.G, mesh))
    data.prepare(config)
    loader = data.make_loader(config, tr.batch_sharding)
    ckpt = Checkpointer(workdir, config, mesh)
    history: list = []
    if ckpt.latest_step() is not None:
        state, extras = ckpt.restore(tr.abstract_state(), loader)
        history = list(extras["metrics_history"])
        print(f"resumed from {ckpt.directory} step {ckpt.latest_step()}", flush=True)
    else:
        state = tr.init_state()
    start = int(jax.device_get(state.step))
    # Cumulative FLOPs, device-seconds and cost, continued across restarts from the last logged record.
    meter = CostMeter(tr.model_cfg, t, num_devices=mesh.size,
                      device_seconds=next((h["compute/device_seconds"] for h in reversed(history)
                                           if "compute/device_seconds" in h), 0.0))

    batch = int(t.batch_size)
    total_steps = max(1, math.ceil(float(t.total_kimg) * 1000 / batch))
    writer = MetricWriter(workdir, enabled=is_main)
    sampler = _Sampler(tr, int(t.sample_grid)) if t.sample_every_kimg > 0 else None
    # TensorBoard also shows which latent owns which region, for the first samples of the grid.
    overlays = (insight.AttentionSnapshot(tr.G, mesh, sampler.z[:4])
                if sampler is not None and insight.has_attention(tr.model_cfg) else None)
    samples_dir = os.path.join(workdir, "samples")
    sample_images = round(float(t.sample_every_kimg) * 1000)
    lrs = {f"lr/{w}": adam_hparams(t, w)["lr"] for w in ("g", "d")}

    def save_samples(step):
        nonlocal last_sampled
        last_sampled = step
        images = sampler(state)
        attention = overlays(state.g_ema_params, state.g_ema_buffers) if overlays is not None else None
        if is_main:
            # Named by kimg with 3 decimals: grids less than 1 kimg apart get distinct files.
            grid = viz.image_grid(images)
            viz.save_png(grid, os.path.join(samples_dir, f"fakes{step * batch / 1000:010.3f}.png"))
            writer.image(step, "samples/fakes", grid)
            if attention is not None:
                writer.image(step, "samples/attention", attention)

    last = {}
    last_sampled = -1
    compiling = [0.0]  # seconds of the current log window spent compiling (or loading) step programs

    def on_compiled(name, seconds):
        compiling[0] += seconds
        if is_main:
            print(f"compiled the {name} training step in {seconds:.1f} s", flush=True)

    tr.train_step.on_compiled = on_compiled
    try:
        if start >= total_steps:
            print(f"already at step {start} >= {total_steps} (total_kimg {t.total_kimg:g}); nothing to do", flush=True)
        pending: list = []
        prev_metrics = None
        window_start, data_wait, window_steps = time.time(), 0.0, 0
        run_start = time.time()
        for step in range(start, total_steps):
            t0 = time.time()
            reals = next(loader)
            data_wait += time.time() - t0
            if step == 0:  # a fresh run: the reals grid and the step-0 fakes (all processes gather)
                images = _gather(reals)[: int(t.sample_grid)]
                if is_main:
                    viz.save_png(viz.image_grid(images), os.path.join(samples_dir, "reals.png"))
                if sampler is not None:
                    save_samples(0)
            state, metrics = tr.train_step(state, reals, step)
            done = step + 1
            window_steps += 1
            pending.append(metrics)
            if prev_metrics is not None and int(prev_metrics["consecutive_skips"]) >= t.max_consecutive_skips:
                raise TrainingStopped(
                    f"training stopped at step {done - 1}: {int(prev_metrics['consecutive_skips'])} consecutive "
                    f"iterations had a non-finite loss or gradient and were skipped "
                    f"(train.max_consecutive_skips={t.max_consecutive_skips}); the state was not updated by "
                    f"them and the last checkpoint (step {ckpt.latest_step()}) is intact")
            prev_metrics = metrics

            extra = {}
            for hook in hooks:
                out = hook(done, state, metrics)
                if isinstance(out, dict):
                    extra.update(out)

            if done % t.log_every == 0 or done == total_steps or extra:
                now = time.time()
                # The rate counts training only: a window that compiled a step program reports it apart.
                elapsed = max(now - window_start - compiling[0], 1e-9)
                logged = _average(pending)
                kimg = done * batch / 1000
                logged.update(extra)
                logged.update(lrs)
                logged.update({
                    "kimg": kimg, "img_per_sec": window_steps * batch / elapsed,
                    "sec_per_kimg": elapsed / (window_steps * batch / 1000), "step_time": elapsed / window_steps,
                    "data_wait_share": data_wait / elapsed, "wall_time": now - run_start,
                    "compile_time": compiling[0]})
                logged.update(meter.update(done, elapsed + compiling[0]))  # devices are held while compiling too
                writer.scalars(done, logged)
                history.append({"step": done, **logged})
                last = logged
                if is_main:
                    eta = (total_steps - done) * logged["step_time"]
                    print(f"step {done}/{total_steps} kimg {kimg:.2f}/{t.total_kimg:g} "
                          f"({100 * done / total_steps:.0f}%) | G {logged.get('G/loss', float('nan')):.3f} "
                          f"D {logged.get('D/loss', float('nan')):.3f} | {logged['img_per_sec']:.1f} img/s "
                          f"{logged['sec_per_kimg']:.1f} s/kimg | skipped {int(logged['skipped'])} | "
                          f"ETA {_fmt_duration(eta)}", flush=True)
                pending, window_start, data_wait, window_steps = [], time.time(), 0.0, 0
                compiling[0] = 0.0

            if sampler is not None and (done * batch) // sample_images > (step * batch) // sample_images:
                save_samples(done)
            ckpt.maybe_save(done, state, loader, history)
            if ckpt.preemption_requested(done):
                logging.warning("preemption requested: saving step %d and exiting", done)
                ckpt.maybe_save(done, state, loader, history, force=True)
                return last
        ckpt.maybe_save(total_steps if start < total_steps else start, state, loader, history, force=True)
        if sampler is not None and start < total_steps and last_sampled != total_steps:
            save_samples(total_steps)
    finally:
        ckpt.close()
        writer.close()
        loader.close()
    return last
