"""Checkpointing in real training processes (ganjax.train.loop.train on a tiny GANsformer).

Every run continues the same 6-step reference run (batch 8, a checkpoint every 2 steps) and must end
with the reference's exact train state: after a restart, after SIGTERM, after kill -9 during a save, and
after 2 processes hand over to 1. Resharded restore reads the reference under other meshes.

R1 is lazy (every 4th step, at 0 and 4), so every restart at step 2 crosses a lazy step: the resumed run must
run the R1 variant at step 4 and scale D's Adam as the uninterrupted one.

Cost: a training process is ~20 s of CPU when its two step programs are in the shared compilation cache,
~1-3 min when it must compile them, so the processes whose outcome is checked later start early and run
side by side (CI has 2 cores): the 2-process run (its own compilation) next to the reference, the first
halves of the SIGTERM and kill -9 cases right after it.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest

from ganjax import parallel
from ganjax.checkpoint import Checkpointer
from ganjax.config import base_config

pytestmark = pytest.mark.slow

STEPS = 6
TIMEOUT = 1200  # seconds for one training process

DRIVER = textwrap.dedent("""
    import asyncio, json, sys
    opts = json.loads(sys.argv[1])
    import jax
    jax.config.update("jax_num_cpu_devices", opts["devices"])
    jax.config.update("jax_compilation_cache_dir", opts["cache"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    sys.path.insert(0, opts["tests_dir"])
    from test_checkpoint_train import tiny_train_config
    if opts.get("stall_save"):  # the n-th checkpoint never finalises: its metrics_history item hangs
        from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
        original, count = jch.JsonCheckpointHandler._save_fn, [0]
        async def stalled(self, x, directory):
            await original(self, x, directory)
            if isinstance(x, dict) and "history" in x:
                count[0] += 1
                if count[0] == opts["stall_save"]:
                    print("STALLED", flush=True)
                    await asyncio.sleep(3600)
        jch.JsonCheckpointHandler._save_fn = stalled
    from ganjax.train.loop import train
    train(tiny_train_config(opts["data_dir"], opts["steps"], opts.get("overrides", {})), opts["workdir"])
    print("FINISHED", flush=True)
""")


def tiny_train_config(data_dir, steps=STEPS, overrides=None):
    c = base_config()
    m = c.model
    m.resolution, m.channel_base, m.channel_max = 16, 256, 16
    m.num_local, m.z_dim, m.w_dim, m.mapping_layers, m.attention_end_res = 2, 8, 8, 1, 8
    c.data.dataset, c.data.num_images, c.data.data_dir = "shapes", 64, data_dir
    t = c.train
    t.batch_size, t.total_kimg, t.log_every, t.sample_every_kimg = 8, steps * 0.008, 1, 0.0
    t.r1_interval = 4  # R1 at steps 0 and 4: a run restarted from step 2 must pick the R1 variant up again
    t.eps = 1e-4  # as tests/test_train_step.py deterministic(): exact-zero gradients stay ~0 under Adam, so the
    # 2-process run, which sums gradients in another order, stays within rounding of the reference
    c.checkpoint.every_kimg, c.checkpoint.keep = 0.016, 10  # a checkpoint every 2 steps, all kept
    for key, value in (overrides or {}).items():
        *section, field = key.split(".")
        (c[section[0]] if section else c)[field] = value
    return c


class Trainer:
    """A training subprocess (its own process group) whose output a thread collects. `signal_at`:
    (line prefix, signal) sends the signal once, when the first such line is printed."""

    def __init__(self, env, workdir, *, steps=STEPS, devices=8, signal_at=None, **opts):
        script = env["root"] / "driver.py"
        if not script.exists():
            script.write_text(DRIVER)
        args = dict(workdir=str(workdir), steps=steps, devices=devices, data_dir=env["data_dir"],
                    cache=env["cache"], tests_dir=env["tests_dir"], **opts)
        self.proc = subprocess.Popen([sys.executable, str(script), json.dumps(args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
        self.lines, self.signalled = [], False
        self._signal_at = signal_at
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if self._signal_at and not self.signalled and line.startswith(self._signal_at[0]):
                self.signalled = True
                self.proc.send_signal(self._signal_at[1])

    def wait(self) -> tuple[int, str]:
        """(exit status, output); a process still running after TIMEOUT is killed with its group."""
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join()
        return self.proc.returncode, "".join(self.lines)

    def finished(self) -> str:
        rc, out = self.wait()
        assert rc == 0 and "FINISHED" in out, out[-3000:]
        return out


def run(env, workdir, **kw) -> str:
    return Trainer(env, workdir, **kw).finished()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from ganjax import data

    root = tmp_path_factory.mktemp("train_ckpt")
    env = {"data_dir": str(root / "tfds"), "cache": str(root / "jax_cache"), "root": root,
           "tests_dir": os.path.dirname(__file__)}
    data.prepare(tiny_train_config(env["data_dir"]))  # once, before processes that would race to write it
    return env


@pytest.fixture(scope="module")
def early(env):
    """Processes started before the reference finishes, checked by their tests. The 2-process run compiles
    its own step program (another device layout), so it runs next to the reference from the start."""
    port = free_port()
    two = [Trainer(env, env["root"] / "two_to_one", steps=2, devices=4, overrides={
        "parallel.coordinator_address": f"localhost:{port}", "parallel.num_processes": 2,
        "parallel.process_id": i}) for i in range(2)]
    started = {"two_processes": two}
    yield started
    for trainer in [*two, *started.get("after_reference", {}).values()]:
        if trainer.proc.poll() is None:
            os.killpg(trainer.proc.pid, signal.SIGKILL)
            trainer.wait()


def restore(env, workdir, step=STEPS, mesh=None, config=None):
    """(train state, extras, Training) of a workdir's checkpoint, restored onto `mesh` (default: dp=8)."""
    from ganjax.train import setup

    config = config or tiny_train_config(env["data_dir"])
    mesh = mesh or parallel.make_mesh(config)
    tr = setup.build(config, mesh)
    ck = Checkpointer(str(workdir), config, mesh)
    try:
        state, extras = ck.restore(tr.abstract_state(), step=step)
    finally:
        ck.close()
    return state, extras, tr


@pytest.fixture(scope="module")
def reference(env, early):
    workdir = env["root"] / "reference"
    run(env, workdir)
    # The step program is cached now: the first halves of the SIGTERM and kill -9 cases start side by side.
    early["after_reference"] = {
        # SIGTERM once step 1 is logged; the run finishes the step it is in, saves, exits 0. No periodic
        # checkpoint falls in the run (every 1000 kimg), so the only one it can leave is the preemption path's.
        "sigterm": Trainer(env, env["root"] / "sigterm", signal_at=("step 1/6", signal.SIGTERM),
                           overrides={"checkpoint.every_kimg": 1000.0}),
        # the 2nd checkpoint (step 4) never finalises; kill -9 while it is being written.
        "killed": Trainer(env, env["root"] / "killed", stall_save=2, signal_at=("STALLED", signal.SIGKILL)),
    }
    state, extras, _ = restore(env, workdir)
    return workdir, jax.tree.map(np.asarray, state), extras


def losses(history):
    return [(h["step"], h["G/loss"], h["D/loss"], h.get("D/r1_penalty")) for h in history]


def assert_same_run(env, workdir, reference):
    """The run in `workdir` ended with the reference's state and losses, bit for bit."""
    _, ref_state, ref_extras = reference
    state, extras, _ = restore(env, workdir)
    names = jax.tree_util.tree_flatten_with_path(ref_state)[0]
    for (path, want), got in zip(names, jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=jax.tree_util.keystr(path))
    assert [h["step"] for h in extras["metrics_history"]] == list(range(1, STEPS + 1))
    assert losses(extras["metrics_history"]) == losses(ref_extras["metrics_history"])


def test_restart_resumes_exactly(env, reference):
    """The reference's 6 steps == its first 2 steps + a new process + 4 steps, bit for bit (params, EMA,
    Adam, rng, data position, losses). The new process resumes the reference's own step-2 checkpoint, so
    the comparison is about the restart alone."""
    workdir = env["root"] / "restart"
    (workdir / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference[0] / "checkpoints" / "2", workdir / "checkpoints" / "2")
    out = run(env, workdir)
    assert "resumed from" in out and "step 3/6" in out and "step 2/6" not in out  # it did not start over
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
    assert_same_run(env, workdir, reference)
    _, _, extras = reference
    # the lazy R1 ran at iterations 0 and 4 (logged as steps 1 and 5): the restart crossed one
    assert [h["step"] for h in extras["metrics_history"] if "D/r1_penalty" in h] == [1, 5]


def test_sigterm_finishes_the_step_saves_exits_0_and_resumes(env, reference, early):
    workdir = env["root"] / "sigterm"
    rc, out = early["after_reference"]["sigterm"].wait()
    assert rc == 0, out[-3000:]
    assert "FINISHED" in out  # train() returned normally
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
    stopped = steps[-1]
    assert len(steps) == 1 and 1 <= stopped < STEPS, steps  # it stopped early: the preemption save, alone
    with open(workdir / "metrics.jsonl") as f:
        logged = [json.loads(line)["step"] for line in f if line.strip()]
    assert logged[-1] == stopped  # no step ran after the preemption save
    out = run(env, workdir)
    assert f"step {stopped + 1}/6" in out and f"step {stopped}/6" not in out
    assert_same_run(env, workdir, reference)


def test_sigterm_while_the_first_step_compiles_exits_at_once(env, tmp_path):
    """Python runs a signal handler only between bytecodes, so inside XLA's compile (one C call) the
    preemption flag would be seen only after it; the startup watcher (ganjax/train/startup_exit.py) ends the
    process at once, as there is nothing new to save before the first step."""
    workdir = tmp_path / "run"
    trainer = Trainer(env, workdir, overrides={"compilation_cache": ""})  # a real compile, ~1 CPU-min
    deadline = time.time() + TIMEOUT
    while not any(line.startswith("step 0: compiling") for line in trainer.lines):
        assert trainer.proc.poll() is None and time.time() < deadline, "".join(trainer.lines)[-3000:]
        time.sleep(0.2)
    time.sleep(8)  # well inside the compile of the step program
    sent = time.time()
    trainer.proc.send_signal(signal.SIGTERM)
    rc, out = trainer.wait()
    took = time.time() - sent
    assert rc == 0, out[-3000:]
    assert "preemption: SIGTERM while compiling the first step" in out and "nothing new since step 0" in out
    assert "compiled the" not in out and "FINISHED" not in out  # it did not wait for the compile to end
    assert took < 10, took
    assert not os.path.isdir(workdir / "checkpoints") or not os.listdir(workdir / "checkpoints")


def test_kill_9_during_a_save_restarts_from_the_last_complete_one(env, reference, early):
    workdir = env["root"] / "killed"
    trainer = early["after_reference"]["killed"]
    rc, out = trainer.wait()
    assert trainer.signalled and rc == -signal.SIGKILL, out[-3000:]
    names = os.listdir(workdir / "checkpoints")
    assert "2" in names and "4" not in names and any(n.startswith("4.orbax-checkpoint-tmp") for n in names)
    out = run(env, workdir)
    assert "step 3/6" in out and "step 2/6" not in out  # resumed from step 2
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]  # the half-written 4 was redone
    assert_same_run(env, workdir, reference)


def test_resharded_restore_of_a_dp8_checkpoint(env, reference):
    """The dp=8 reference restores under fsdp=4, dp=2 x model=2 and one device: same values, new layout."""
    ref_workdir, ref_state, _ = reference
    devices = jax.devices()
    cases = {
        "fsdp4": ({"parallel.strategy": "fsdp", "parallel.mesh_data": 1, "parallel.mesh_fsdp": 4}, devices[:4]),
        "dp2_model2": ({"parallel.strategy": "fsdp_tp", "parallel.mesh_data": 2, "parallel.mesh_model": 2},
                       devices[:4]),
        "single": ({"parallel.mesh_data": 1}, devices[:1]),
    }
    for name, (overrides, devs) in cases.items():
        config = tiny_train_config(env["data_dir"], overrides=overrides)
        mesh = parallel.make_mesh(config, devices=devs)
        state, _, tr = restore(env, ref_workdir, mesh=mesh, config=config)
        for got, want, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state),
                                       jax.tree.leaves(tr.state_shardings), strict=True):
            np.testing.assert_array_equal(np.asarray(got), want)
            assert got.sharding.is_equivalent_to(sharding, got.ndim), name
        split = [leaf for leaf in jax.tree.leaves(state) if not leaf.sharding.is_fully_replicated]
        assert bool(split) == (name != "single"), name  # fsdp / tensor parallelism really split params


def test_two_processes_hand_over_to_one(env, reference, early):
    """2 processes x 4 devices train 2 steps and save; 1 process with 8 devices resumes to step 6."""
    workdir = env["root"] / "two_to_one"
    results = [trainer.wait() for trainer in early["two_processes"]]
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    # The 2-process checkpoint restores losslessly in this one process, on 8 devices and on 1.
    on8, extras, _ = restore(env, workdir, step=2)
    config = tiny_train_config(env["data_dir"], overrides={"parallel.mesh_data": 1})
    on1, _, _ = restore(env, workdir, step=2, mesh=parallel.make_mesh(config, devices=jax.devices()[:1]),
                        config=config)
    for a, b in zip(jax.tree.leaves(on8), jax.tree.leaves(on1), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["step"] for h in extras["metrics_history"]] == [1, 2]
    out = run(env, workdir)
    assert "step 3/6" in out and "step 2/6" not in out
    # gloo's cross-process all-reduce may sum in another order than one process does, so the run must match the
    # reference closely, not bit for bit: each float leaf within 1e-2 of the distance it travelled since the
    # step-2 checkpoint, plus 1e-6 of the largest value of its group (the params of a network, one Adam moment
    # of a network: float32 rounding, which also covers the moments of gradients that are zero up to rounding);
    # integers (step, rng, Adam counts, skips) exactly. A misplaced or wrongly reduced gradient, or a leaf
    # restored wrong, moves a leaf by O(1) of its travel.
    _, ref_state, _ = reference
    state, _, _ = restore(env, workdir)
    paths = jax.tree_util.tree_flatten_with_path(ref_state)[0]
    group = lambda path: jax.tree_util.keystr(path[:3] if "opt_state" in jax.tree_util.keystr(path[:1]) else path[:1])
    scale = {}
    for path, want in paths:
        if np.issubdtype(want.dtype, np.floating):
            scale[group(path)] = max(scale.get(group(path), 0.0), float(np.max(np.abs(want), initial=0)))
    worst = 0.0
    for (path, want), got, start in zip(paths, jax.tree.leaves(state), jax.tree.leaves(on8), strict=True):
        got, start, name = np.asarray(got), np.asarray(start), jax.tree_util.keystr(path)
        if not np.issubdtype(want.dtype, np.floating):
            np.testing.assert_array_equal(got, want, err_msg=name)
            continue
        travelled = float(np.max(np.abs(want - start), initial=0))
        diff = float(np.max(np.abs(got - want), initial=0))
        bound = 1e-2 * travelled + 1e-6 * scale[group(path)]  # 0 for a group that is all zeros (pl_mean, PL off)
        assert diff <= bound, (name, diff, travelled, scale[group(path)])
        worst = max(worst, diff / bound if bound else 0.0)
    print(f"2->1 process run vs reference: worst leaf at {worst:.3g} of its bound")
    assert int(state.step) == STEPS
