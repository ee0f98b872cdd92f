"""The training loop: `train(config, workdir)` runs for the config's length (train.total_kimg, or a compute
budget: ganjax/train/length.py), resuming from the workdir.

Per step the host only dispatches work: the jitted step runs asynchronously and its metrics stay on the
devices until a log step fetches them all at once (one sync per log_every steps). The one per-step read is
the consecutive-skip counter of the *previous* step, which has finished or nearly so by then, so it does
not drain the dispatch queue.
"""

import dataclasses
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ganjax import compilation_cache, data, hardware, insight, parallel, sampling, viz
from ganjax.checkpoint import Checkpointer
from ganjax.checkpoint.trees import config_to_dict
from ganjax.config import validate
from ganjax.evaluate import EvaluationAbandoned, PeriodicEvaluation
from ganjax.train import intervals, programs, setup
from ganjax.train.cost import CostMeter
from ganjax.train.length import EvalSchedule, RunLength
from ganjax.train.startup_exit import StartupExit
from ganjax.train.state import adam_hparams
from ganjax.train.summary import MetricWriter
from ganjax.train.workdir_lock import WorkdirLock


HARDWARE_FILE = "hardware.json"


class TrainingStopped(RuntimeError):
    """Too many consecutive non-finite updates; the last checkpoint is intact."""


def _config_json(config) -> str:
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


class _SampleGrids:
    """G_ema on seeds 0 .. train.sample_grid - 1 (ganjax/sampling.py's seed scheme; const noise, no
    truncation) as PNG grids in workdir/samples and TensorBoard images, with the attention overlays of the
    first four where G has attention; every train.sample_every_kimg, at step 0 and at the end. Grid image j
    is `ganjax sample --seeds j` of the same G_ema. A conditional G's grid has one row per class, seeds
    0 .. max(4, ceil(sample_grid / num_classes)) - 1 in the columns (`ganjax sample --class all`). Every process
    calls it (the images are gathered); process 0 writes."""

    def __init__(self, tr: setup.Training, workdir: str, writer: MetricWriter, is_main: bool):
        t, mc = tr.config.train, tr.model_cfg
        self.batch, self.is_main, self.writer = int(t.batch_size), is_main, writer
        self.every = intervals.images(t.sample_every_kimg, "train.sample_every_kimg")
        self.dir = os.path.join(workdir, "samples")
        self.last = -1
        classes = mc.num_classes
        self.cols = max(4, -(-int(t.sample_grid) // classes)) if classes else None
        seeds = range(self.cols if classes else int(t.sample_grid))
        z, _ = sampling.seed_latents(seeds, mc.num_latents, mc.z_dim)
        labels = None
        if classes:  # row c: the seeds in class c
            z, labels = jnp.tile(z, (classes, 1, 1)), jnp.repeat(jnp.arange(classes, dtype=jnp.int32), self.cols)
        shardings, replicated, G = tr.state_shardings, parallel.replicated(tr.mesh), tr.G
        self._fn = jax.jit(
            lambda p, b, z, y: G.apply({"params": p, "buffers": b}, z, noise_mode="const", labels=y),
            in_shardings=(shardings.g_ema_params, shardings.g_ema_buffers, replicated, replicated),
            out_shardings=replicated)
        self.z, self.labels = z, labels
        # TensorBoard also shows which latent owns which region, for the first samples of the grid.
        self._overlays = (insight.AttentionSnapshot(G, tr.mesh, z[:4], labels=None if labels is None else labels[:4])
                          if insight.has_attention(mc) else None)

    def due(self, step: int) -> bool:
        """After iteration `step` - 1 ran (step iterations done)."""
        return intervals.crossed(step - 1, step, self.batch, self.every)

    def __call__(self, step: int, state):
        self.last = step
        images = np.asarray(self._fn(state.g_ema_params, state.g_ema_buffers, self.z, self.labels).addressable_data(0))
        attention = (self._overlays(state.g_ema_params, state.g_ema_buffers)
                     if self._overlays is not None else None)
        if self.is_main:
            # Named by kimg with 3 decimals: grids less than 1 kimg apart get distinct files.
            kimg = f"{step * self.batch / 1000:010.3f}"
            grid = viz.image_grid(images, self.cols)
            viz.save_png(grid, os.path.join(self.dir, f"fakes{kimg}.png"))
            self.writer.image(step, "samples/fakes", grid)
            if attention is not None:  # beside the grid: its first samples, then which latent owns each region
                viz.save_png(attention, os.path.join(self.dir, f"attention{kimg}.png"))
                self.writer.image(step, "samples/attention", attention)


class _LogWindow:
    """The metrics of the steps since the last log line, fetched and averaged every train.log_every steps
    (one device sync per window), with the window's rates: img/s and s/kimg count training only, the seconds
    spent compiling (or loading) step programs (compile_time) and evaluating (eval/seconds) are logged apart
    and counted by the cost meter (the devices are held then too). So is each step program's first run in a
    session (first_run_time): its step is left out of the window's rate, unless the window holds nothing else."""

    def __init__(self, config, meter: CostMeter, writer: MetricWriter, history: list, length: RunLength,
                 is_main: bool):
        t = config.train
        self.batch, self.log_every = int(t.batch_size), int(t.log_every)
        self.meter, self.writer, self.history, self.length, self.is_main = meter, writer, history, length, is_main
        self._agreed_seconds = meter.device_seconds
        self.lrs = {f"lr/{w}": adam_hparams(t, w)["lr"] for w in ("g", "d")}
        self.run_start = time.time()
        self._reset()

    def restart(self):
        """Start the first window's clock at the first step: the restore, the sample grids' fixed latents and
        the rest of start-up before it are not training."""
        self._reset()

    def _reset(self):
        self.pending, self.start, self.data_wait, self.steps, self.compiling = [], time.time(), 0.0, 0, 0.0
        self.first_runs, self.first_run_time = 0, 0.0

    def on_compiled(self, name: str, seconds: float, waited: float):
        self.compiling += waited
        if self.is_main:
            during = f" (begun during start-up; the step waited {waited:.1f} s)" if waited < seconds - 0.05 else ""
            print(f"compiled the {name} training step in {seconds:.1f} s{during}", flush=True)

    def on_first_run(self, name: str, seconds: float):
        """A step program's first execution in this session (TrainStep.on_first_run): not the steady rate."""
        self.first_runs += 1
        self.first_run_time += seconds

    def on_first_grid(self, seconds: float):
        """The first sample grid of a session compiles G_ema's sampling (and attention-overlay) programs: its
        seconds count as compile time, not training (else the first log line's rate and ETA are off)."""
        self.compiling += seconds
        if self.is_main:
            print(f"compiled the sample grid's programs in {seconds:.1f} s (with the first grid)", flush=True)

    def next_batch(self, loader):
        """(reals, labels) of the next batch; labels is None unless the data is labelled (data.label)."""
        t0 = time.time()
        batch = next(loader)
        self.data_wait += time.time() - t0
        return batch if loader.labeled else (batch, None)

    def add(self, metrics):
        self.steps += 1
        self.pending.append(metrics)

    def device_seconds(self, done: int) -> float:
        """The cost meter's device-seconds now, for a wall-clock length (else unused: 0). Several processes
        must agree on it (it ends the run), so there it is process 0's clock, shared at every log_every-th
        step (a collective all processes make at the same steps) and held in between."""
        if not self.length.wall_clock:
            return 0.0
        now = self.meter.device_seconds + (time.time() - self.start) * self.meter.num_devices
        if jax.process_count() == 1:
            return now
        if done % self.log_every == 0:
            self._agreed_seconds = float(multihost_utils.broadcast_one_to_all(np.float64(now)))
        return self._agreed_seconds

    def due(self, done: int, extra: dict, final: bool) -> bool:
        return done % self.log_every == 0 or final or bool(extra)

    def log(self, done: int, extra: dict) -> dict:
        now = time.time()
        evaluating = float(extra.get("eval/seconds", 0.0))  # an evaluation in this window: not training time
        training = max(now - self.start - self.compiling - evaluating, 1e-9)
        # The rate over the steps that were not a program's first run (unless the window holds only those).
        first_runs, first_run_time = ((self.first_runs, self.first_run_time) if self.steps > self.first_runs
                                      else (0, 0.0))
        steps, elapsed = self.steps - first_runs, max(training - first_run_time, 1e-9)
        logged = _average(self.pending)
        kimg = done * self.batch / 1000
        logged.update(extra)
        for name, lr in self.lrs.items():  # the constant lrs, where the step does not log ramped ones
            logged.setdefault(name, lr)
        logged.update({
            "kimg": kimg, "img_per_sec": steps * self.batch / elapsed,
            "sec_per_kimg": elapsed / (steps * self.batch / 1000), "step_time": elapsed / steps,
            "data_wait_share": self.data_wait / training, "wall_time": now - self.run_start,
            "compile_time": self.compiling, "first_run_time": first_run_time})
        logged.update(self.meter.update(done, training + self.compiling + evaluating))
        self.writer.scalars(done, logged)
        self.history.append({"step": done, **logged})
        if self.is_main:
            n = self.length
            progress = n.progress(done, self.meter.device_seconds)
            if n.total_steps is not None:
                where = f"step {done}/{n.total_steps} kimg {kimg:.2f}"
                eta = (n.total_steps - done) * logged["step_time"]
            else:
                where = f"step {done} kimg {kimg:.2f}"
                eta = (n.budget_seconds - self.meter.device_seconds) / self.meter.num_devices
            print(f"{where} ({100 * progress:.0f}% of {n.describe()}) | G {logged.get('G/loss', float('nan')):.3f} "
                  f"D {logged.get('D/loss', float('nan')):.3f} | {logged['img_per_sec']:.1f} img/s "
                  f"{logged['sec_per_kimg']:.1f} s/kimg | skipped {int(logged['skipped'])} | "
                  f"ETA {_fmt_duration(eta)}", flush=True)
        self._reset()
        return logged


def _gather(x) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _save_reals(reals, count: int, workdir: str, is_main: bool):
    images = _gather(reals)[:count]
    if is_main:
        viz.save_png(viz.image_grid(images), os.path.join(workdir, "samples", "reals.png"))


def _prepare_workdir(config, workdir: str, fresh: bool, is_main: bool) -> str:
    """The absolute workdir (after deleting a previous run's outputs if `fresh`); every process returns once
    process 0 has done it. config.json is written once the checkpoint restored (_write_config)."""
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
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ganjax.train.workdir")
    return workdir


def _write_config(config, workdir: str, is_main: bool):
    """config.json of the run, written after the restore: a resume that the checkpoint refuses (another
    model) leaves the config of the run that wrote it. Beside it hardware.json: the devices this session of
    the run holds (what `ganjax report` labels its figures with)."""
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(_config_json(config))
        with open(os.path.join(workdir, HARDWARE_FILE), "w") as f:
            json.dump({"hardware": hardware.describe_devices(jax.devices()), "devices": jax.device_count(),
                       "processes": jax.process_count()}, f)


def _restore(ckpt: Checkpointer, tr: setup.Training, loader, resume_step: int | None = None):
    """(state, metric history): checkpoint `resume_step`'s, else the latest readable one's (a damaged one is
    moved aside: Checkpointer.restore), loader repositioned; or a fresh state when there is none."""
    if ckpt.latest_step() is None and resume_step is None:
        return tr.init_state(), []
    state, extras = ckpt.restore(tr.abstract_state(), loader, step=resume_step)
    print(f"resumed from {ckpt.directory} step {ckpt.restored_step}", flush=True)
    return state, list(extras["metrics_history"])


def _check_skips(prev_metrics, done: int, limit: int, ckpt: Checkpointer):
    """Stop after `limit` consecutive skipped (non-finite) iterations; reads the previous step's counter,
    which has finished (or nearly) by now, so the check does not drain the dispatch queue."""
    if prev_metrics is not None and int(prev_metrics["consecutive_skips"]) >= limit:
        raise TrainingStopped(
            f"training stopped at step {done - 1}: {int(prev_metrics['consecutive_skips'])} consecutive "
            f"iterations had a non-finite loss or gradient and were skipped "
            f"(train.max_consecutive_skips={limit}); the state was not updated by "
            f"them and the last checkpoint (step {ckpt.latest_step()}) is intact")


def _save_and_exit(ckpt: Checkpointer, window, done: int, final: bool, state, loader, history, last) -> dict:
    """The preemption exit: the log line due at this step (so the metric history stays whole across the
    resume), then a committed save of this step; returns the last logged metrics."""
    if window.due(done, {}, final):
        last = window.log(done, {})
    seconds = ckpt.save_for_preemption(done, state, loader, history)
    logging.warning("preemption: step %d committed %.1f s after the notice; exiting", done, seconds)
    print(f"preemption: saved step {done} ({seconds:.1f} s after the notice); exiting", flush=True)
    return last


def _run_hooks(hooks, done: int, state, metrics) -> dict:
    extra = {}
    for hook in hooks:
        out = hook(done, state, metrics)
        if isinstance(out, dict):
            extra.update(out)
    return extra


def train(config, workdir: str, *, fresh: bool = False, hooks=(), resume_step: int | None = None) -> dict:
    """Train for the config's length (ganjax/train/length.py); returns the last logged metrics.

    Resumes from workdir/checkpoints unless `fresh` (which deletes the workdir's previous checkpoints,
    metrics, TensorBoard events and samples). `hooks`: callables hook(step, state, metrics) run after every
    step (metrics are device arrays); a hook may return a dict of extra metrics to log (e.g. FID).
    `resume_step`: resume from that checkpoint instead of the latest readable one.
    Raises TrainingStopped after config.train.max_consecutive_skips non-finite iterations in a row.
    """
    parallel.maybe_initialize_distributed(config)
    validate(config, num_devices=jax.device_count())
    compilation_cache.enable(config.compilation_cache)
    is_main = jax.process_index() == 0
    # One trainer per workdir (taken before `fresh` deletes anything): a second one is refused here.
    lock = WorkdirLock(workdir).acquire() if is_main else None
    startup = StartupExit()  # SIGTERM before the first step exits at once, even inside a compile
    try:
        return _train(config, workdir, fresh, hooks, is_main, resume_step, startup)
    finally:
        startup.disarm()
        if lock is not None:
            lock.release()


@dataclasses.dataclass
class _Session:
    """What one training session holds between its steps (built by _start, closed by close())."""
    config: object
    workdir: str
    is_main: bool
    tr: setup.Training
    length: RunLength
    loader: object
    ckpt: Checkpointer
    evaluation: PeriodicEvaluation | None
    schedule: EvalSchedule
    writer: MetricWriter
    samples: _SampleGrids | None
    window: _LogWindow
    state: object
    history: list
    start: int

    def close(self):
        self.tr.train_step.finish_ahead()
        self.ckpt.close()
        self.writer.close()
        self.loader.close()


def _start(config, workdir: str, fresh: bool, is_main: bool, resume_step, startup: StartupExit) -> _Session:
    """Workdir, model, evaluation, data, checkpoint restore, cost meter, writers: the session before its
    first step. Each stage names itself to `startup`, so a SIGTERM during it says what was interrupted."""
    startup.phase = "preparing the workdir"
    workdir = _prepare_workdir(config, workdir, fresh, is_main)
    mesh = parallel.make_mesh(config)
    startup.phase = "building the model"
    tr = setup.build(config, mesh)
    length = RunLength(config)
    # FID etc. as EvalSchedule says (every eval.every_kimg / every_pflops, at_fractions, the last step). Built
    # first: it loads the Inception weights, so a missing file stops the run before anything else starts.
    startup.phase = "loading the Inception weights"
    evaluation = PeriodicEvaluation(config, tr.G, mesh) if EvalSchedule.enabled(config) else None
    startup.phase = "preparing the dataset"
    data.prepare(config)
    loader = data.make_loader(config, tr.batch_sharding)
    ckpt = Checkpointer(workdir, config, mesh)
    # A resumed run's first program compiles (or loads from the cache) in the background from here, beside
    # the checkpoint restore and the first batch; after the checks that can refuse the run (Inception weights,
    # dataset), so a refusal does not wait for a compile. A restore that falls back to an earlier step (a
    # damaged checkpoint) compiles what that step needs when it runs. Not on a fresh run: its step 0 compiled
    # beside the sample grid's program, and on one busy core that first start took 115 s end to end against 99 s.
    first = resume_step if resume_step is not None else ckpt.latest_step()
    if first:
        tr.train_step.compile_ahead(first, (tr.abstract_state(),) + programs.batch_args(tr))
    try:
        return _restored_session(config, workdir, is_main, resume_step, startup, tr, length, evaluation, loader, ckpt)
    except BaseException:
        tr.train_step.finish_ahead()  # no compile thread may still be inside XLA when the interpreter exits
        raise


def _restored_session(config, workdir, is_main, resume_step, startup, tr, length, evaluation, loader, ckpt):
    t = config.train
    mesh = tr.mesh
    if evaluation is not None:  # a preemption notice abandons an evaluation between its batches
        evaluation.stop = ckpt.preemption_noticed
    startup.phase = "restoring the checkpoint"
    state, history = _restore(ckpt, tr, loader, resume_step)
    _write_config(config, workdir, is_main)
    start = int(jax.device_get(state.step))
    startup.start_step = start
    # Cumulative FLOPs, device-seconds and cost, continued across restarts from the last logged record.
    meter = CostMeter(tr.model_cfg, t, num_devices=mesh.size,
                      device_seconds=next((h["compute/device_seconds"] for h in reversed(history)
                                           if "compute/device_seconds" in h), 0.0))
    writer = MetricWriter(workdir, enabled=is_main, start_step=start)
    window = _LogWindow(config, meter, writer, history, length, is_main)
    tr.train_step.on_compiled = window.on_compiled
    tr.train_step.on_first_run = window.on_first_run
    return _Session(config=config, workdir=workdir, is_main=is_main, tr=tr, length=length, loader=loader, ckpt=ckpt,
                    evaluation=evaluation, schedule=EvalSchedule(config, length, meter.device_seconds),
                    writer=writer, window=window, state=state, history=history, start=start,
                    samples=_SampleGrids(tr, workdir, writer, is_main) if t.sample_every_kimg > 0 else None)


def _train(config, workdir: str, fresh: bool, hooks, is_main: bool, resume_step, startup: StartupExit) -> dict:
    s = _start(config, workdir, fresh, is_main, resume_step, startup)
    try:
        return _steps(s, hooks, startup)
    finally:
        s.close()


def _steps(s: _Session, hooks, startup: StartupExit) -> dict:
    """Step until the run's length: batch, step, skip check, preemption, hooks, evaluation, log line, sample
    grid, checkpoint; then the final checkpoint and grid. Returns the last logged metrics."""
    t, window, ckpt = s.config.train, s.window, s.ckpt
    last, prev_metrics = {}, None
    step = s.start
    finished = s.length.finished(step, window.meter.device_seconds)
    startup.phase = "compiling the first step"
    if s.is_main and not finished:
        print(f"step {step}: compiling the training step programs (run length {s.length.describe()})", flush=True)
    if finished:
        print(f"already at step {step}, the end of the run's length ({s.length.describe()}); nothing to do",
              flush=True)
    jax.block_until_ready(s.state)  # a restore still landing is start-up, not the first window's training
    window.restart()
    while not finished:
        reals, labels = window.next_batch(s.loader)
        if step == 0:  # a fresh run: the reals grid and the step-0 fakes (every process gathers)
            _save_reals(reals, int(t.sample_grid), s.workdir, s.is_main)
            if s.samples is not None:
                _grid(s, 0)
        s.state, metrics = s.tr.train_step(s.state, reals, step, labels)
        startup.disarm()  # compiled and dispatched: from here a notice saves at the step boundary
        done = step + 1
        window.add(metrics)
        _check_skips(prev_metrics, done, t.max_consecutive_skips, ckpt)
        prev_metrics = metrics
        seconds = window.device_seconds(done)
        finished = s.length.finished(done, seconds)
        # Preemption first: save and exit before evaluation and sample grids, which a resume does not need
        # (a preempted VM gives ~30 s from SIGTERM to SIGKILL). A log line due at this step is still
        # written (one fetch of the window's metrics), so the metric history stays whole across the resume.
        if ckpt.preemption_requested(done):
            return _save_and_exit(ckpt, window, done, finished, s.state, s.loader, s.history, last)
        extra = _run_hooks(hooks, done, s.state, metrics)
        if s.evaluation is not None and s.schedule.due(done, finished, seconds):
            try:
                extra.update(s.evaluation(s.state))
            except EvaluationAbandoned:  # SIGTERM during an evaluation: its result is not needed to resume
                print(f"preemption: abandoned the evaluation of step {done}", flush=True)
                return _save_and_exit(ckpt, window, done, finished, s.state, s.loader, s.history, last)
        if window.due(done, extra, finished):
            last = window.log(done, extra)
            ckpt.check_saves()  # a failed asynchronous save stops the run here, not at the next save
        if s.samples is not None and s.samples.due(done):
            _grid(s, done)
        ckpt.maybe_save(done, s.state, s.loader, s.history)
        step = done
    ckpt.maybe_save(step, s.state, s.loader, s.history, force=True)
    if s.samples is not None and step > s.start and s.samples.last != step:
        _grid(s, step)
    return last


def _grid(s: _Session, step: int):
    """The sample grid of `step`; the session's first one tells the log window how long it took."""
    first, t0 = s.samples.last < 0, time.time()
    s.samples(step, s.state)
    if first:
        s.window.on_first_grid(time.time() - t0)
