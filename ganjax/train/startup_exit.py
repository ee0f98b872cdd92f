"""SIGTERM while a run starts (preparing data, restoring, compiling the first step) exits at once.

Until the first step of this session completes there is nothing new to save, so a preemption notice then
needs no checkpoint, only a prompt exit. The catch is the compile: XLA compiles the step inside one C call
(minutes for a large model), and Python runs signal handlers only between bytecodes of the main thread, so a
handler would run only after the compile. Python's C-level handler does write the signal number to the
wakeup fd (signal.set_wakeup_fd) at once, so a watcher thread reading that fd can end the process while the
main thread is still compiling. After the first step the watcher is gone and the Checkpointer's preemption
path (save at the next step boundary, then exit 0) takes over.

Single process only: with jax.distributed, XLA's preemption notifier owns SIGTERM and the processes stop
together at a step the coordination service picks.
"""

import os
import signal
import threading

import jax


class StartupExit:
    """Armed from construction until disarm(): a SIGTERM prints what was being done and exits 0 (as a
    preemption that saved does) with nothing written."""

    def __init__(self, start_step: int = 0):
        self.phase = "setting up"
        self.start_step = start_step
        self._armed = False
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._armed = True
        threading.Thread(target=self._watch, name="ganjax-startup-exit", daemon=True).start()

    def _on_sigterm(self, signum, frame):  # reached only when the main thread is in Python code
        if self._armed:
            self._exit()
        # disarmed, yet reinstalled by a handler that replaced this one and has restored it: act as the one
        # before this did
        previous = self._previous_handler
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def _watch(self):
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if not data:
                return  # disarmed: the pipe was closed
            if signal.SIGTERM in data and self._armed:
                self._exit()

    def _exit(self):
        print(f"preemption: SIGTERM while {self.phase} (before the first step of this session, so nothing new "
              f"since step {self.start_step} to save); exiting", flush=True)
        os._exit(0)

    def disarm(self):
        """The first step has run: SIGTERM now goes to the handler installed after this one (or back to the
        one before it)."""
        if not self._armed:
            return
        self._armed = False
        signal.set_wakeup_fd(self._previous_fd)
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._previous_handler)
        os.close(self._write)  # the watcher reads EOF and ends
