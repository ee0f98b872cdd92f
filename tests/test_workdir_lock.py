"""One trainer per workdir: a live holder refuses a second trainer, naming it; a dead holder's lock is taken
over; the lock is released at the end of a run."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from test_train_step import tiny_config

from ganjax.train.loop import train
from ganjax.train.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLocked

HOLD = textwrap.dedent("""
    import sys, time
    from ganjax.train.workdir_lock import WorkdirLock
    lock = WorkdirLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def holder(workdir, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_refuses_a_second_trainer_and_is_named(tmp_path):
    proc = holder(tmp_path, 60)
    try:
        with pytest.raises(WorkdirLocked) as e:
            WorkdirLock(tmp_path).acquire()
        assert f"pid {proc.pid} on " in str(e.value) and "started" in str(e.value)
        assert proc.poll() is None  # the first trainer is unharmed
        with open(tmp_path / LOCK_NAME) as f:
            assert json.load(f)["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    proc = holder(tmp_path, 60)
    proc.kill()  # SIGKILL: no cleanup; the record stays in the file, the kernel drops the flock
    proc.wait()
    lock = WorkdirLock(tmp_path).acquire()
    assert lock.previous["pid"] == proc.pid
    assert f"no longer running (pid {proc.pid}" in capsys.readouterr().out
    with open(tmp_path / LOCK_NAME) as f:
        assert json.load(f)["pid"] == os.getpid()
    lock.release()
    again = WorkdirLock(tmp_path).acquire()  # released: taken again, with no stale record
    assert again.previous is None
    again.release()


def test_a_holder_that_exits_releases(tmp_path):
    proc = holder(tmp_path, 0.1)
    proc.wait()
    time.sleep(0.1)
    WorkdirLock(tmp_path).acquire().release()


def test_train_on_a_held_workdir_is_refused_before_touching_it(tmp_path):

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    proc = holder(tmp_path, 60)
    try:
        with pytest.raises(WorkdirLocked):
            train(tiny_config("dp"), str(tmp_path), fresh=True)  # fresh would delete metrics.jsonl
        assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
        assert not (tmp_path / "config.json").exists()
    finally:
        proc.kill()
        proc.wait()
