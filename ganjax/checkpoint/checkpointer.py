"""Orbax checkpoints of a training run: periodic async saves, exact resume, resharded restore, preemption.

One checkpoint step under workdir/checkpoints/<step>/ holds four Orbax items:
  state            the whole train state (StandardSave; restored against an abstract target whose shardings
                   belong to the *current* mesh, so a run resumes on another mesh, device or process count)
  loader           the data iterator state (JSON), so a resumed run sees exactly the batches it would have seen
  config           the resolved config (JSON)
  metrics_history  the list of metric dicts logged so far (JSON)
Orbax writes each step into a temporary directory and renames it when every item is complete, so a crash
mid-save never leaves a step that `latest_step()` picks up.
"""

import dataclasses
import logging
import os
import signal
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from ganjax.checkpoint.trees import (CheckpointError, check_compatible, config_to_dict, describe_read_error,
                                    to_jsonable)
from ganjax.train import intervals
from ganjax.train.length import EvalSchedule




def _handler_registry():
    # Registered up front so a fresh manager can read an existing step's metadata before any restore.
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add("state", ocp.args.StandardSave)
    registry.add("state", ocp.args.StandardRestore)
    for name in ("loader", "config", "metrics_history"):
        registry.add(name, ocp.args.JsonSave)
        registry.add(name, ocp.args.JsonRestore)
    return registry


def ensure_writable(directory: str):
    """Create `directory` and prove a file can be written there; a clear error instead of a late async one."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write_probe_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"checkpoint directory {directory} is not writable: {e}") from e


def _without_absent_empty_fields(target, saved):
    """(target to restore, function from the restored tree to the full one). A dataclass state's fields
    that hold no arrays in this run and that the checkpoint lacks (a field added after it was written, such
    as TrainState.augment with augmentation not adaptive) are restored without, then put back as they are
    in the target: older checkpoints keep resuming. check_compatible has already matched every array."""
    if not dataclasses.is_dataclass(target) or not hasattr(saved, "keys"):
        return target, lambda restored: restored
    fields = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)}
    absent = {k: v for k, v in fields.items() if k not in saved.keys() and not jax.tree.leaves(v)}
    if not absent:
        return target, lambda restored: restored
    present = {k: v for k, v in fields.items() if k not in absent}
    return present, lambda restored: type(target)(**restored, **absent)


class _Unreadable(Exception):
    """Reading a checkpoint's files failed (its __cause__ says how): damage, not a mismatch of the model."""


def _fid(metrics) -> float:
    # Checkpoints saved without a measured FID rank last for best-by-FID.
    return float(metrics.get("fid", np.inf))


def _fid_at(step: int, metrics_history) -> float | None:
    """The FID measured at exactly `step` (the state being saved), if the history has one."""
    for entry in reversed(metrics_history or ()):
        if entry.get("step", step) != step:
            break  # the history is in step order: only its tail can belong to `step`
        if "fid" in entry:
            return float(entry["fid"])
    return None


class _PreemptionWatcher:
    """Answers 'was a preemption notice (SIGTERM) seen?' identically on every process.

    With jax.distributed initialised, XLA's preemption notifier owns SIGTERM and the coordination service
    picks one safe step that all processes reach (multihost_utils.reached_preemption_sync_point). A plain
    single process has no such service, so a Python SIGTERM handler sets a flag checked between steps.
    """

    def __init__(self):
        self._use_sync_point = jax.distributed.is_initialized()
        self._flag = threading.Event()
        self.noticed_at = None  # time.time() of the notice (single process) or of the sync point reached
        self._previous_handler = None
        if not self._use_sync_point and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        logging.warning("SIGTERM received: finishing the current step, then saving and exiting")
        self.noticed_at = time.time()
        self._flag.set()

    def requested(self, step: int) -> bool:
        if self._use_sync_point:
            reached = bool(multihost_utils.reached_preemption_sync_point(int(step)))
            if reached and self.noticed_at is None:
                self.noticed_at = time.time()
            return reached
        return self._flag.is_set()

    def close(self):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None


class Checkpointer:
    """The training loop's view of checkpointing: periodic and forced saves of (state, loader position, config,
    metric history), the preemption flag, and restores onto any mesh (see the module docstring)."""

    def __init__(self, workdir: str, config, mesh):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._mesh = mesh
        ck = config.checkpoint
        self._images_per_step = int(config.train.batch_size)
        try:
            self._interval_images = intervals.images(ck.every_kimg, "checkpoint.every_kimg")
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        if int(ck.keep) < 1:
            raise CheckpointError(f"checkpoint.keep must be >= 1 (got {ck.keep})")
        metrics = [m.strip() for m in str(config.eval.metrics).split(",")]
        self._track_fid = EvalSchedule.enabled(config) and "fid" in metrics
        self._config_json = config_to_dict(config)
        ensure_writable(self.directory)

        keep = [policies.LatestN(n=int(ck.keep))]
        if self._track_fid:
            # reverse=True sorts by FID descending, so BestN's "last n" is the lowest FID.
            keep.append(policies.BestN(get_metric_fn=_fid, reverse=True, n=1, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=bool(ck.async_save),
            preservation_policy=policies.AnyPreservationPolicy(keep),
            best_fn=_fid if self._track_fid else None,  # makes Orbax store per-step metrics and rank best_step()
            best_mode="min",
            cleanup_tmp_directories=True,  # removes the half-written steps of a killed run
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=_handler_registry())
        latest = self._manager.latest_step()
        self._last_step = 0 if latest is None else latest
        self.restored_step: int | None = None  # the step the last restore() read
        self._preemption = _PreemptionWatcher()

    # -- queries -----------------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def best_step(self) -> int | None:
        """Step with the lowest FID (the latest step when FID is not tracked)."""
        return self._manager.best_step()

    def preemption_requested(self, step: int) -> bool:
        return self._preemption.requested(step)

    def preemption_noticed(self) -> bool:
        """Whether SIGTERM arrived, checkable at any time (between evaluation batches); always False with
        several processes, which must agree on when to stop and do so at a step (the preemption sync point)."""
        return not self._preemption._use_sync_point and self._preemption._flag.is_set()

    def save_for_preemption(self, step: int, state, loader, metrics_history) -> float:
        """Save `step` now and wait until it is committed; returns the seconds since the notice."""
        self.maybe_save(step, state, loader, metrics_history, force=True)
        self._raise_pending_error()
        return time.time() - (self._preemption.noticed_at or time.time())

    # -- save --------------------------------------------------------------------------------------------
    def _crosses_interval(self, step: int) -> bool:
        return intervals.crossed(self._last_step, step, self._images_per_step, self._interval_images)

    def maybe_save(self, step: int, state, loader=None, metrics_history=None, *, force=False) -> bool:
        step = int(step)
        fid = _fid_at(step, metrics_history) if self._track_fid else None
        # A step with a fresh FID is saved too, so the best-by-FID checkpoint exists whatever the intervals.
        due = force or self._crosses_interval(step) or fid is not None
        self._last_step = max(self._last_step, step)
        if not due or step in self._manager.all_steps():
            return False
        self._raise_pending_error()
        history = to_jsonable(list(metrics_history or []))
        metrics = ({} if fid is None else {"fid": fid}) if self._track_fid else None
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            loader=ocp.args.JsonSave(to_jsonable(loader.get_state()) if loader is not None else {}),
            config=ocp.args.JsonSave(self._config_json),
            metrics_history=ocp.args.JsonSave({"history": history}),
        )
        try:
            return bool(self._manager.save(step, args=args, metrics=metrics, force=True))
        except Exception as e:
            self._manager.reload()  # forget the failed step; earlier steps on disk are untouched
            raise CheckpointError(f"saving checkpoint step {step} under {self.directory} failed: {e}") from e

    def check_saves(self):
        """Raise CheckpointError now if an asynchronous save has finished and failed; returns at once while one
        is still writing. The loop calls it at each log line, so a failing disk stops the run within a log
        interval, naming the last complete checkpoint, not at the next save (which may be hours away)."""
        if not self._manager.is_saving_in_progress():
            self._raise_pending_error()

    def _raise_pending_error(self):
        """Surface a failed *async* save (e.g. disk full) as a clear error at the next save or close."""
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as e:
            self._manager.reload()
            raise CheckpointError(
                f"an asynchronous checkpoint save under {self.directory} failed: {e}; "
                f"the last complete checkpoint is step {self._manager.latest_step()}"
            ) from e

    # -- restore -----------------------------------------------------------------------------------------
    def _with_default_sharding(self, abstract_state):
        """Leaves without a sharding (scalars such as step) are replicated over the current mesh."""
        replicated = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())

        def fill(x):
            sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or replicated)

        return jax.tree.map(fill, abstract_state)

    def restore(self, abstract_state, loader=None, step=None):
        """(state, extras) of checkpoint `step`, or of the latest one that reads back when `step` is None.

        A damaged latest checkpoint (a truncated or unreadable file) is moved aside to
        WORKDIR/checkpoints_aside/<step>-damaged (kept, never deleted), named with the error, and the next older one
        is tried, in a single-process run; with several processes, or for an explicit `step`, the damage is an
        error naming the step (pick another one with `ganjax train --resume_step`). A checkpoint that reads
        but does not fit the model is always an error (check_compatible)."""
        explicit = step is not None
        step = self._manager.latest_step() if step is None else int(step)
        if step is None:
            raise CheckpointError(f"no complete checkpoint under {self.directory}")
        while True:
            if step not in self._manager.all_steps():
                raise CheckpointError(f"checkpoint step {step} not found under {self.directory} "
                                      f"(complete steps: {self.all_steps()})")
            try:
                restored = self._restore_step(step, abstract_state, loader)
                if explicit:
                    self._supersede_newer(step)
                return restored
            except _Unreadable as e:
                damage = describe_read_error(e.__cause__)
                older = [s for s in self.all_steps() if s < step]
                if explicit or jax.process_count() > 1 or not older:
                    why = ("no older checkpoint to fall back to" if not older and not explicit else
                           f"choose another step with --resume_step (complete steps: {self.all_steps()})")
                    raise CheckpointError(f"checkpoint {self.directory}/{step} is damaged: {damage}; {why}") from e.__cause__
                aside = self._set_aside(step, "damaged")
                logging.warning("checkpoint step %d is damaged (%s); moved to %s", step, damage, aside)
                print(f"checkpoint step {step} is damaged ({damage}); moved it to {aside} and falling back to "
                      f"step {older[-1]}", flush=True)
                step = older[-1]

    def _restore_step(self, step: int, abstract_state, loader):
        target = self._with_default_sharding(abstract_state)
        try:
            saved = self._manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001 - what Orbax/TensorStore raise for unreadable files varies
            raise _Unreadable() from e
        check_compatible(saved, target, f"checkpoint {self.directory}/{step}")  # another model: not damage
        target, put_back = _without_absent_empty_fields(target, saved)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target),
                    loader=ocp.args.JsonRestore(),
                    config=ocp.args.JsonRestore(),
                    metrics_history=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # noqa: BLE001
            raise _Unreadable() from e
        # A checkpoint saved without a loader (e.g. converted released weights, to fine-tune) has no data
        # position: the loader then starts at the beginning of its stream.
        if loader is not None and restored["loader"]:
            loader.set_state(restored["loader"])
        self._last_step = step
        self.restored_step = step
        extras = {"metrics_history": list(restored["metrics_history"]["history"]), "config": restored["config"]}
        return put_back(restored["state"]), extras

    def _set_aside(self, step: int, why: str) -> str:
        """Moves a step out of the manager's directory to WORKDIR/checkpoints_aside/<step>-<why> (kept for
        inspection, never deleted); returns where."""
        aside_root = os.path.join(os.path.dirname(self.directory), "checkpoints_aside")
        os.makedirs(aside_root, exist_ok=True)
        aside = os.path.join(aside_root, f"{step}-{why}")
        if os.path.exists(aside):
            aside = f"{aside}.{int(time.time())}"
        os.rename(os.path.join(self.directory, str(step)), aside)
        self._manager.reload()
        return aside

    def _supersede_newer(self, step: int):
        """After resuming from an explicit older step, its newer checkpoints belong to the abandoned run:
        moved aside, so that the resumed run's own saves of those steps happen and the next resume finds them."""
        newer = [s for s in self.all_steps() if s > step]
        if newer and jax.process_index() == 0:
            for s in newer:
                aside = self._set_aside(s, "superseded")
                print(f"resuming from step {step}: moved the newer checkpoint {s} to {aside}", flush=True)
        if newer and jax.process_count() > 1:
            multihost_utils.sync_global_devices("ganjax.checkpoint.supersede")
            self._manager.reload()

    def close(self):
        """Wait for pending async saves (raising if one failed) and release the SIGTERM handler."""
        try:
            self._raise_pending_error()
        finally:
            self._manager.close()
            self._preemption.close()
