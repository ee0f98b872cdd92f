"""Two processes x 2 CPU devices (jax.distributed + gloo on 127.0.0.1) run the same 2 steps as one
process with 4 devices; of two processes in collectives, one killed makes the other exit within its heartbeat
timeout."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

# Runs in each worker process: the same tiny config as tests/test_train_step.py, a global batch built from
# each process's rows, 2 steps; process 0 writes the metrics and every parameter array.
WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    sys.path.insert(0, os.environ["TESTS_DIR"])
    import numpy as np
    from jax.experimental import multihost_utils
    from ganjax import parallel
    from ganjax.train import setup
    from test_multihost import config, global_reals, leaves

    c = config(process_id=int(sys.argv[1]), port=int(sys.argv[2]))
    assert parallel.maybe_initialize_distributed(c)
    assert jax.process_count() == 2 and jax.device_count() == 4
    tr = setup.build(c, parallel.make_mesh(c))
    state = tr.init_state()
    rows = global_reals()
    lo = jax.process_index() * 4
    batch = jax.make_array_from_process_local_data(tr.batch_sharding, rows[lo:lo + 4], rows.shape)
    metrics = []
    for step in range(2):
        state, m = tr.train_step(state, batch, step)
        print("process", jax.process_index(), "step", step, flush=True)
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    params = multihost_utils.process_allgather((state.g_params, state.d_params), tiled=True)
    if jax.process_index() == 0:
        with open(sys.argv[3], "w") as f:
            json.dump({"metrics": metrics}, f)
        np.savez(sys.argv[3] + ".npz", *leaves(params))
    jax.distributed.shutdown()
""")


def config(process_id=-1, port=0):
    from ganjax.config import base_config

    c = base_config()
    m = c.model
    m.resolution, m.channel_base, m.channel_max = 16, 256, 16
    m.num_local, m.z_dim, m.w_dim = 2, 8, 8
    m.mapping_layers, m.attention_end_res, m.mbstd_group, m.attention_dropout = 1, 8, 1, 0.0
    t = c.train
    t.batch_size, t.r1_interval, t.noise_mode, t.style_mixing_prob = 8, 1, "const", 0.0
    t.eps = 1e-4  # see tests/test_train_step.py deterministic(): exact-zero gradients stay ~0 under Adam
    p = c.parallel
    p.strategy, p.mesh_data, p.mesh_fsdp = "fsdp", 2, 2
    if process_id >= 0:
        p.distributed, p.coordinator_address = "on", f"127.0.0.1:{port}"
        p.num_processes, p.process_id = 2, process_id
    return c


def global_reals():
    return np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)


def leaves(params):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # compiles the full GAN step of a real model (~1 CPU-min per program)
def test_two_processes_match_one_process(tmp_path):
    port = _free_port()
    out = tmp_path / "rank0.json"
    env = dict(os.environ, TESTS_DIR=os.path.dirname(__file__), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=1800)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            tails = [q.communicate()[0][-2000:] for q in procs]
            pytest.fail("multi-process workers timed out; their output:\n" + "\n---\n".join(tails))
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    got = json.loads(out.read_text())

    from ganjax import parallel
    from ganjax.train import setup

    c = config()
    tr = setup.build(c, parallel.make_mesh(c, jax.devices()[:4]))
    state = tr.init_state()
    init = leaves(jax.device_get((state.g_params, state.d_params)))
    batch = jax.device_put(global_reals(), tr.batch_sharding)
    for step in range(2):
        state, m = tr.train_step(state, batch, step)
        for k, v in jax.device_get(m).items():
            np.testing.assert_allclose(got["metrics"][step][k], float(v), rtol=1e-5, atol=1e-7, err_msg=k)
    # Every parameter, element by element, against the distance each leaf travelled in the 2 steps: the two
    # runs sum gradients in different orders (gloo's all-reduce vs one process), and a gradient element formed by
    # cancellation keeps fewer digits, so one element's update may differ by more than float32 rounding (measured
    # worst: 2.3e-3 of its leaf's largest move); a misplaced or wrongly reduced gradient moves whole leaves by O(1)
    # of their travel. Bound: 1e-2 of the travel, plus 1e-6 absolute: ~8 float32 ulps of a unit value (equalized
    # learning rate stores parameters at unit scale), which also covers the leaves whose gradient is zero up to
    # rounding (a bias ahead of a normalisation) and which drift by ~1e-8 of noise either way.
    with np.load(str(out) + ".npz") as f:
        got_params = [f[f"arr_{i}"] for i in range(len(f.files))]
    want = leaves(jax.device_get((state.g_params, state.d_params)))
    assert len(got_params) == len(want) == len(init)
    for i, (g, w, w0) in enumerate(zip(got_params, want, init)):
        travelled = float(np.abs(w - w0).max())
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-2 * travelled + 1e-6 * max(float(np.abs(w).max()), 1.0),
                                   err_msg=f"parameter leaf {i} {w.shape}")


# A light worker of the heartbeat test: joins through ganjax's distributed setup with a 10 s heartbeat, then
# all-reduces a small array every 50 ms (no model: nothing to compile but a sum).
HEARTBEAT_WORKER = textwrap.dedent("""
    import os, sys, time
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_num_cpu_devices", 1)
    sys.path.insert(0, os.environ["TESTS_DIR"])
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from ganjax import parallel
    from test_multihost import config

    c = config(process_id=int(sys.argv[1]), port=int(sys.argv[2]))
    c.parallel.heartbeat_timeout_s = int(sys.argv[3])
    assert parallel.maybe_initialize_distributed(c)
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), jnp.ones((1,)), (2,))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
    for i in range(100000):
        assert float(total(x)) == 2.0
        if i % 20 == 0:
            print("process", jax.process_index(), "all-reduce", i, flush=True)
        time.sleep(0.05)
""")


@pytest.mark.slow  # ~30 s: two processes, one killed, the other waits out its heartbeat timeout
def test_a_killed_process_makes_the_other_exit_within_the_heartbeat_timeout(tmp_path):
    """kill -9 of process 1 while both all-reduce: process 0 exits non-zero within the heartbeat timeout
    (config.parallel.heartbeat_timeout_s, 10 s here) plus a margin, naming the lost task, instead of hanging in a
    collective (the README's multi-host section)."""
    heartbeat = 10
    port = _free_port()
    env = dict(os.environ, TESTS_DIR=os.path.dirname(__file__), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", HEARTBEAT_WORKER, str(i), str(port), str(heartbeat)], env=env,
                              stdout=open(logs[i], "w"), stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        deadline = time.monotonic() + 300
        while "all-reduce 20" not in logs[1].read_text():  # both are past their start and in collectives
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
                log.read_text()[-2000:] for log in logs]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        rc = procs[0].wait(timeout=heartbeat + 60)
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    out = logs[0].read_text()
    print(f"process 0 exited {rc} {waited:.1f} s after process 1 was killed")
    assert rc != 0, out[-2000:]
    assert waited < heartbeat + 30, (waited, out[-2000:])
    # the runtime names the lost task (either line, depending on where process 0 was when it noticed)
    assert "Task 1 heartbeat timeout" in out or re.search(r"unhealthy \(stopped sending heartbeats\):\s*1\b", out), \
        out[-3000:]
