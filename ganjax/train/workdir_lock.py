"""One trainer per workdir: an exclusive lock on WORKDIR/.ganjax-train.lock for the life of a run.

Two trainers on one workdir corrupt each other's checkpoints (one removes the other's temporary save
directory mid-save). The lock is an flock(2) held by process 0 of the run (its other processes write
under its lead); the kernel drops it when the holder exits or is killed, so a stale lock needs no manual
cleanup: the file's record of the previous holder (pid, host, start time) is then overwritten, and said.
A filesystem without flock support (some FUSE mounts) gets a warning and no lock.
"""

import datetime
import errno
import fcntl
import json
import os
import socket

from absl import logging

LOCK_NAME = ".ganjax-train.lock"


class WorkdirLocked(RuntimeError):
    """Another live trainer holds the workdir."""


def _describe(record: dict) -> str:
    return (f"pid {record.get('pid', '?')} on {record.get('host', '?')}, started "
            f"{record.get('started', '?')}")


class WorkdirLock:
    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
        self._fd = None
        self.previous: dict | None = None  # the record a stale lock left, when it was taken over

    def _read(self, fd) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            return json.loads(os.read(fd, 4096).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {}

    def acquire(self) -> "WorkdirLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = self._read(fd)
                os.close(fd)
                raise WorkdirLocked(
                    f"workdir {os.path.dirname(self.path)} is in use by a running trainer ({_describe(holder)}); "
                    f"stop it first or train in another --workdir") from None
            os.close(fd)
            logging.warning("cannot lock %s (%s): this filesystem has no flock; nothing stops a second "
                            "trainer on this workdir", self.path, e)
            return self
        record = self._read(fd)
        if record:
            self.previous = record
            print(f"taking over the lock of {os.path.dirname(self.path)} from a trainer that is no longer "
                  f"running ({_describe(record)})", flush=True)
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(mine).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self):
        """Unlock, leaving an empty file (a later trainer then has no stale record to report)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
