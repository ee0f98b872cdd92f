"""Two JAX processes (4 CPU devices each, one 8-device mesh): SIGTERM to one host stops both at the same
step with one shared checkpoint, which then restores in a single process on 1 and on 8 devices."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ganjax.checkpoint import Checkpointer
from ganjax.config import base_config

WORKER = textwrap.dedent("""
    import sys, time
    import jax, numpy as np
    pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from ganjax.checkpoint import Checkpointer
    from ganjax.config import base_config

    class Loader:  # per-process position, like a loader that reads this host's rows
        def get_state(self):
            return {"batches": step}

    config = base_config()
    config.train.batch_size = 8
    config.checkpoint.every_kimg = 1000.0  # only the preemption save happens
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    full = np.arange(64, dtype=np.float32).reshape(16, 4)
    w = jax.make_array_from_callback(full.shape, NamedSharding(mesh, P("data")), lambda idx: full[idx])
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))
    ck = Checkpointer(workdir, config, mesh)
    print("READY", flush=True)
    step = 0
    while step < 2000:
        step += 1
        float(total(w))  # a cross-process collective per step, like a train step
        time.sleep(0.02)
        if ck.preemption_requested(step):
            step_array = jax.make_array_from_callback((), NamedSharding(mesh, P()), lambda idx: np.int32(step))
            ck.maybe_save(step, {"w": w, "step": step_array}, Loader(), force=True)
            ck.close()
            print("PREEMPTED", step, flush=True)
            sys.exit(0)
    sys.exit(3)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_process_preemption_agrees_and_restores_on_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workdir = str(tmp_path / "run")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port, workdir], env=env,
                              stdout=subprocess.PIPE, stderr=open(tmp_path / f"err{i}", "w"), text=True) for i in range(2)]
    try:
        for p in procs:
            while (line := p.stdout.readline()) and line.strip() != "READY":  # gloo prints to stdout
                pass
            assert line, "worker exited before READY"
        time.sleep(0.5)
        procs[1].send_signal(signal.SIGTERM)  # the scheduler preempts one host
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    steps = {int(out.split("PREEMPTED")[1].split()[0]) for out in outs}
    assert len(steps) == 1, outs  # both hosts stopped at the same step
    (step,) = steps

    config = base_config()
    config.train.batch_size = 8
    expected = np.arange(64, dtype=np.float32).reshape(16, 4)
    for n_devices in (1, 8):
        mesh = jax.make_mesh((n_devices,), ("data",), axis_types=(AxisType.Explicit,),
                             devices=jax.devices()[:n_devices])
        ck = Checkpointer(workdir, config, mesh)
        assert ck.latest_step() == step
        target = {"w": jax.ShapeDtypeStruct((16, 4), np.float32, sharding=NamedSharding(mesh, P("data"))),
                  "step": jax.ShapeDtypeStruct((), np.int32)}
        restored, _ = ck.restore(target)
        ck.close()
        assert len(restored["w"].sharding.device_set) == n_devices
        np.testing.assert_array_equal(np.asarray(restored["w"]), expected)
        assert int(restored["step"]) == step
