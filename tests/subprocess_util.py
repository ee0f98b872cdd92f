"""Running ganjax commands and launchers as subprocesses from tests."""

import os
import signal
import subprocess


def run_killing_group(argv, timeout, **kwargs):
    """subprocess.run that, on timeout, kills the whole process group (the trainers a launcher or a sweep
    started too), so a timed-out test leaves no training processes behind."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
