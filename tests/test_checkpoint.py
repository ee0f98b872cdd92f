"""Checkpointer on generic sharded pytrees (no model needed): policy, resharded restore, bad input, crashes."""

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import flax
import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ganjax.checkpoint import Checkpointer, CheckpointError
from ganjax.config import base_config


def make_config(every_kimg=0.016, keep=2, batch=8, eval_every=0.0, async_save=True):
    c = base_config()
    c.train.batch_size = batch
    c.checkpoint.every_kimg = every_kimg  # with batch 8: 0.016 kimg = every 2 steps
    c.checkpoint.keep = keep
    c.checkpoint.async_save = async_save
    c.eval.every_kimg = eval_every
    return c


def mesh_of(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Explicit,) * len(shape))


class FakeLoader:
    def __init__(self, position=0):
        self.position = position

    def get_state(self):
        return {"position": self.position, "seed": 7}

    def set_state(self, state):
        assert state["seed"] == 7
        self.position = state["position"]


def dp8_state():
    """A train-state-like tree: an FSDP-able matrix, a bias, an int step and raw rng key data."""
    mesh = mesh_of((8,), ("data",))
    rng = np.random.default_rng(0)
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    return mesh, {
        "g": {"w": put(rng.standard_normal((16, 8)).astype(np.float32), P("data")),
              "b": put(rng.standard_normal((8,)).astype(np.float32), P())},
        "opt": [put(rng.standard_normal((16, 8)).astype(np.float32), P("data"))],
        "step": put(np.int32(12), P()),
        "rng": put(jax.random.key_data(jax.random.key(3)), P()),
    }


def abstract_like(state, sharding_for):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_for(x)), state)


def assert_tree_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_policy_keep_and_force(tmp_path):
    mesh, state = dp8_state()
    ck = Checkpointer(str(tmp_path), make_config(every_kimg=0.016, keep=2), mesh)
    saved = [step for step in range(1, 8) if ck.maybe_save(step, state, FakeLoader(step))]
    assert saved == [2, 4, 6]  # 8 images/step, a save every 16 images
    assert ck.maybe_save(7, state, FakeLoader(7), force=True)
    assert not ck.maybe_save(7, state, FakeLoader(7), force=True)  # already saved: no duplicate
    ck.close()
    assert ck.all_steps() == [6, 7]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "7"]


def test_restore_onto_other_meshes(tmp_path):
    """dp=8 checkpoint -> fsdp=4, dp=2 x model=2, one device: values, shardings, loader and extras."""
    mesh, state = dp8_state()
    history = [{"step": 11, "loss_g": np.float32(0.5)}, {"step": 12, "loss_g": 0.25}]
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    assert ck.maybe_save(12, state, FakeLoader(96), history)
    ck.close()

    targets = {
        "fsdp4": (mesh_of((4,), ("fsdp",)), P("fsdp")),
        "dp2_model2": (mesh_of((2, 2), ("data", "model")), P("data", "model")),
        "single": (mesh_of((1,), ("data",)), P()),
    }
    for name, (new_mesh, matrix_spec) in targets.items():
        def sharding_for(x, new_mesh=new_mesh, matrix_spec=matrix_spec):
            return NamedSharding(new_mesh, matrix_spec if x.ndim == 2 else P())

        ck = Checkpointer(str(tmp_path), make_config(), new_mesh)
        assert ck.latest_step() == 12
        loader = FakeLoader()
        restored, extras = ck.restore(abstract_like(state, sharding_for), loader)
        ck.close()
        assert_tree_equal(restored, state)
        assert restored["g"]["w"].sharding == sharding_for(state["g"]["w"]), name
        assert len(restored["g"]["w"].sharding.device_set) == new_mesh.size
        assert loader.position == 96
        assert extras["metrics_history"] == [{"step": 11, "loss_g": 0.5}, {"step": 12, "loss_g": 0.25}]
        assert extras["config"]["train"]["batch_size"] == 8


def test_scalars_without_sharding_are_replicated_on_current_mesh(tmp_path):
    mesh, state = dp8_state()
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    ck.maybe_save(2, state)
    ck.close()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)  # no shardings at all
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    restored, extras = ck.restore(abstract)
    ck.close()
    assert_tree_equal(restored, state)
    assert restored["step"].sharding == NamedSharding(mesh, P())
    assert extras["metrics_history"] == []


def test_checkpoint_without_loader_state_starts_the_loader_fresh(tmp_path):
    """Converted released weights are saved with no data position: fine-tuning reads from the start."""
    mesh, state = dp8_state()
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    ck.maybe_save(0, state, force=True)
    ck.close()
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    loader = FakeLoader(position=0)
    restored, _ = ck.restore(abstract_like(state, lambda x: x.sharding), loader)
    ck.close()
    assert loader.position == 0
    assert_tree_equal(restored, state)


def test_async_save_survives_donation_of_the_saved_arrays(tmp_path):
    """The loop donates the state to the next step right after maybe_save returns."""
    mesh, state = dp8_state()
    expected = jax.tree.map(np.asarray, state)
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    assert ck.maybe_save(2, state)
    for leaf in jax.tree.leaves(state):
        leaf.delete()
    ck.close()
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    restored, _ = ck.restore(abstract_like(expected, lambda x: NamedSharding(mesh, P())))
    ck.close()
    assert_tree_equal(restored, expected)


def test_best_by_fid_is_kept_beyond_last_n(tmp_path):
    mesh, state = dp8_state()
    config = make_config(every_kimg=0.008, keep=1, eval_every=0.008)
    ck = Checkpointer(str(tmp_path), config, mesh)
    fids = {1: 30.0, 2: 12.0, 3: 20.0, 4: 25.0}
    history = []
    for step, fid in fids.items():
        history.append({"step": step, "fid": fid})
        assert ck.maybe_save(step, state, metrics_history=history)
    ck.close()
    assert ck.all_steps() == [2, 4]  # best FID (step 2) + the latest
    assert ck.best_step() == 2


def test_a_step_with_a_fresh_fid_is_saved_off_interval(tmp_path):
    mesh, state = dp8_state()
    config = make_config(every_kimg=0.08, keep=1, eval_every=0.024)  # saves every 10 steps, FID every 3
    ck = Checkpointer(str(tmp_path), config, mesh)
    history = []
    saved = []
    for step in range(1, 11):
        if step % 3 == 0:
            history.append({"step": step, "fid": {3: 9.0, 6: 5.0, 9: 7.0}[step]})
        history.append({"step": step, "loss": 1.0})  # later entries of the same step keep the FID visible
        if ck.maybe_save(step, state, metrics_history=history):
            saved.append(step)
    ck.close()
    assert saved == [3, 6, 9, 10]
    assert ck.all_steps() == [6, 10] and ck.best_step() == 6


def test_incompatible_checkpoint_names_path_and_shapes(tmp_path):
    mesh, state = dp8_state()
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    ck.maybe_save(2, state)
    ck.close()
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    abstract = abstract_like(state, lambda x: NamedSharding(mesh, P()))
    wider = dict(abstract, g=dict(abstract["g"], w=jax.ShapeDtypeStruct((16, 12), np.float32)))
    with pytest.raises(CheckpointError, match=r"'g/w' has shape \(16, 8\) float32 in the checkpoint but \(16, 12\)"):
        ck.restore(wider)
    extra = dict(abstract, g=dict(abstract["g"], attn=jax.ShapeDtypeStruct((4,), np.float32)))
    with pytest.raises(CheckpointError, match=r"'g/attn' \(shape \(4,\)\) is not in the checkpoint"):
        ck.restore(extra)
    fewer = dict(abstract, g={"w": abstract["g"]["w"]})
    with pytest.raises(CheckpointError, match=r"'g/b' \(shape \(8,\)\) is in the checkpoint but not in the model"):
        ck.restore(fewer)
    with pytest.raises(CheckpointError, match="step 3 not found"):
        ck.restore(abstract, step=3)
    ck.close()


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")  # works as root too, unlike chmod
    with pytest.raises(CheckpointError, match=f"{blocker}/checkpoints is not writable"):
        Checkpointer(str(blocker), make_config(), mesh_of((8,), ("data",)))


@pytest.mark.parametrize("async_save", [True, False])
def test_failed_save_keeps_previous_checkpoint(tmp_path, async_save):
    """A write that fails at the OS level (file size limit, as on a full disk) is reported; step 1 survives."""
    mesh = mesh_of((8,), ("data",))
    rng = np.random.default_rng(0)  # random data: Orbax compresses constant arrays below the limit
    state = lambda: {"w": jax.device_put(rng.standard_normal((512, 256)).astype(np.float32),  # noqa: E731
                                         NamedSharding(mesh, P("data")))}
    config = make_config(every_kimg=0.008, keep=1, async_save=async_save)
    first = state()
    ck = Checkpointer(str(tmp_path), config, mesh)
    ck.maybe_save(1, first)
    ck.close()

    ck = Checkpointer(str(tmp_path), config, mesh)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, hard))
    try:
        with pytest.raises(CheckpointError, match=r"(?s)failed: .*File too large"):
            try:
                ck.maybe_save(2, state())  # synchronous saves fail here,
            finally:
                ck.close()  # asynchronous ones when the loop waits for them
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert ck.latest_step() == 1

    ck = Checkpointer(str(tmp_path), config, mesh)
    assert ck.all_steps() == [1]
    restored, _ = ck.restore({"w": jax.ShapeDtypeStruct((512, 256), np.float32, sharding=first["w"].sharding)})
    ck.close()
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(first["w"]))
    # Only complete steps count: the half-written step 2 is never listed (Orbax may leave its temp dir).
    assert [n for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()] == ["1"]


def test_a_failed_async_save_is_reported_once_it_has_finished(tmp_path):
    """check_saves (polled by the loop at each log line) raises once a background save has failed, without
    waiting for the next save; before that it does not block or raise."""
    mesh = mesh_of((8,), ("data",))
    rng = np.random.default_rng(0)
    state = {"w": jax.device_put(rng.standard_normal((512, 256)).astype(np.float32), NamedSharding(mesh, P("data")))}
    ck = Checkpointer(str(tmp_path), make_config(every_kimg=0.008, keep=1, async_save=True), mesh)
    ck.maybe_save(1, state)
    ck.close()
    ck = Checkpointer(str(tmp_path), make_config(every_kimg=0.008, keep=1, async_save=True), mesh)
    ck.check_saves()  # nothing pending: no error
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, hard))
    try:
        assert ck.maybe_save(2, state)  # accepted: the write fails in the background
        deadline = time.time() + 60
        with pytest.raises(CheckpointError, match=r"(?s)asynchronous checkpoint save .* failed: .*File too large.*"
                                                  r"the last complete checkpoint is step 1"):
            while time.time() < deadline:
                ck.check_saves()
                time.sleep(0.05)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    ck.close()


KILLED_SAVER = textwrap.dedent("""
    import asyncio, sys
    import jax, numpy as np
    jax.config.update("jax_num_cpu_devices", 8)
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
    sys.path.insert(0, {tests_dir!r})
    from test_checkpoint import dp8_state, make_config
    from ganjax.checkpoint import Checkpointer

    mesh, state = dp8_state()
    ck = Checkpointer({workdir!r}, make_config(), mesh)
    ck.maybe_save(2, state, metrics_history=[{{"step": 2}}])
    ck.close()

    original = jch.JsonCheckpointHandler._save_fn
    async def stalled_save_fn(self, x, directory):  # step 4's last item never completes
        await original(self, x, directory)
        if "history" in x:
            print("SAVING", flush=True)
            await asyncio.sleep(600)
    jch.JsonCheckpointHandler._save_fn = stalled_save_fn
    ck = Checkpointer({workdir!r}, make_config(), mesh)
    ck.maybe_save(4, jax.tree.map(lambda x: x + 1, state), metrics_history=[{{"step": 4}}])
    ck.close()
""")


def test_kill_during_save_restarts_from_last_complete(tmp_path):
    workdir = str(tmp_path / "run")
    script = tmp_path / "saver.py"
    script.write_text(KILLED_SAVER.format(tests_dir=os.path.dirname(__file__), workdir=workdir))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 120
        while proc.stdout.readline().strip() != b"SAVING":
            assert proc.poll() is None and time.time() < deadline, "saver exited before stalling"
        proc.kill()  # SIGKILL while step 4 is written but not finalised
    finally:
        proc.wait()
    ckdir = tmp_path / "run" / "checkpoints"
    assert any(name.startswith("4.orbax-checkpoint-tmp") for name in os.listdir(ckdir))

    mesh, state = dp8_state()
    ck = Checkpointer(workdir, make_config(), mesh)
    assert ck.latest_step() == 2
    restored, extras = ck.restore(abstract_like(state, lambda x: NamedSharding(mesh, P())))
    assert_tree_equal(restored, state)
    assert extras["metrics_history"] == [{"step": 2}]
    assert sorted(os.listdir(ckdir)) == ["2"]
    # and the run goes on: step 4 can be saved again
    assert ck.maybe_save(4, state)
    ck.close()
    assert ck.all_steps() == [2, 4]


def test_sigterm_sets_preemption_flag(tmp_path):
    mesh, _ = dp8_state()
    before = signal.getsignal(signal.SIGTERM)
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    try:
        assert not ck.preemption_requested(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the Python handler runs at the next bytecode boundary
        assert ck.preemption_requested(2)
    finally:
        ck.close()
    assert signal.getsignal(signal.SIGTERM) is before  # handler released on close


def test_augmentation_p_survives_a_round_trip_exactly(tmp_path):
    """Adaptive augmentation's state (TrainState.augment) is saved and restored bit for bit."""
    mesh, state = dp8_state()
    put = lambda x: jax.device_put(np.float32(x), NamedSharding(mesh, P()))  # noqa: E731
    state["augment"] = {"p": put(0.37129837), "signs": put(1.25)}
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    ck.maybe_save(4, state, force=True)
    ck.close()
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    restored, _ = ck.restore(abstract_like(state, lambda x: NamedSharding(mesh, P())))
    ck.close()
    assert np.asarray(restored["augment"]["p"]).tobytes() == np.float32(0.37129837).tobytes()
    assert_tree_equal(restored, state)


@flax.struct.dataclass
class _OldState:
    w: jax.Array
    step: jax.Array


@flax.struct.dataclass
class _NewState:
    w: jax.Array
    step: jax.Array
    augment: dict = flax.struct.field(default_factory=dict)  # added later; empty when not adaptive


def test_a_checkpoint_from_before_an_empty_field_was_added_restores(tmp_path):
    """A state field added later that holds no arrays in this run (TrainState.augment without adaptive
    augmentation) does not stop an older checkpoint, which lacks it, from resuming."""
    mesh = mesh_of((8,), ("data",))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P()))  # noqa: E731
    old = _OldState(w=put(np.arange(8, dtype=np.float32)), step=put(np.int32(5)))
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    ck.maybe_save(5, old, force=True)
    ck.close()
    target = _NewState(w=jax.ShapeDtypeStruct((8,), np.float32, sharding=NamedSharding(mesh, P())),
                       step=jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(mesh, P())))
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    restored, _ = ck.restore(target)
    ck.close()
    assert isinstance(restored, _NewState) and restored.augment == {}
    np.testing.assert_array_equal(np.asarray(restored.w), np.arange(8, dtype=np.float32))
    assert int(restored.step) == 5


def _truncate_array_files(step_dir):
    """Cuts every data file of the state item short, as a failing disk or a partial copy leaves them. To 8
    bytes, not to half: a file holds several arrays, and one that lies in the first half would still read."""
    for root, _, names in os.walk(os.path.join(step_dir, "state")):
        if os.path.basename(root) == "d":
            for name in names:
                with open(os.path.join(root, name), "r+b") as fh:
                    fh.truncate(8)


def _two_steps(tmp_path, second_state=None):
    mesh, state = dp8_state()
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    ck.maybe_save(2, state, FakeLoader(2), force=True)
    ck.maybe_save(4, state if second_state is None else second_state, FakeLoader(4), force=True)
    ck.close()
    return mesh, state


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    mesh, state = _two_steps(tmp_path)
    _truncate_array_files(tmp_path / "checkpoints" / "4")
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    loader = FakeLoader()
    restored, _ = ck.restore(abstract_like(state, lambda x: NamedSharding(mesh, P())), loader)
    assert ck.restored_step == 2 and loader.position == 2
    assert_tree_equal(restored, state)
    out = capsys.readouterr().out
    assert "checkpoint step 4 is damaged (" in out and "falling back to step 2" in out
    assert "not valid for value of size" in out  # TensorStore's reason, on one line
    assert ck.all_steps() == [2]
    assert (tmp_path / "checkpoints_aside" / "4-damaged" / "state").is_dir()  # kept, not deleted
    assert ck.maybe_save(4, state, FakeLoader(4), force=True)  # the resumed run saves its own step 4
    ck.close()


def test_an_explicit_damaged_step_is_an_error_naming_it(tmp_path):
    mesh, state = _two_steps(tmp_path)
    _truncate_array_files(tmp_path / "checkpoints" / "4")
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    with pytest.raises(CheckpointError, match=r"checkpoints/4 is damaged: .*--resume_step \(complete steps: \[2, 4\]\)"):
        ck.restore(abstract_like(state, lambda x: NamedSharding(mesh, P())), step=4)
    ck.close()


def test_resuming_an_older_step_sets_the_newer_ones_aside(tmp_path):
    mesh, state = _two_steps(tmp_path)
    ck = Checkpointer(str(tmp_path), make_config(), mesh)
    ck.restore(abstract_like(state, lambda x: NamedSharding(mesh, P())), step=2)
    assert ck.all_steps() == [2] and (tmp_path / "checkpoints_aside" / "4-superseded").is_dir()
    assert ck.maybe_save(4, state, FakeLoader(4), force=True)
    ck.close()
