"""Two JAX processes (4 CPU devices each): each feeds its own images, every process gets the features of all
of them; a batch already spread over both processes works too; process 0 alone writes the reference cache.
A cheap stand-in replaces the Inception network (its parity is tests/test_inception.py's job)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

WORKER = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    pid, port, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    from ganjax import metrics
    from ganjax.metrics import inception

    inception.features = (lambda params, images, protocol=None:
                          (inception.to_levels(images) / 127.5 - 1.0).mean(axis=(1, 2)) * params["s"])
    images = np.random.default_rng(0).integers(0, 256, (2, 10, 6, 6, 3), dtype=np.uint8)  # [process, n, ...]
    ex = metrics.FeatureExtractor({"s": jnp.float32(3.0)})
    out = {"devices": ex.mesh.size}
    # Per-process numpy parts of 3 (padded to 4 per process, the padding dropped again).
    out["local"] = ex(images[pid, :3]).tolist()
    # A global batch spread over both processes' devices.
    glob = jax.make_array_from_process_local_data(ex.sharding, images[pid, :4])
    out["global"] = ex(glob).tolist()
    # Reference statistics: both processes compute, process 0 writes the cache, then both read it.
    batches = [images[pid, i : i + 5] for i in (0, 5)]
    ref = metrics.dataset_reference_stats(batches, 20, ex, cache)
    cached = metrics.dataset_reference_stats(lambda step: 1 / 0, 20, ex, cache)
    out["ref_mu"] = ref.mu.tolist()
    out["cached_equal"] = bool(np.array_equal(cached.features, ref.features))
    out["fid_self"] = metrics.compute_metrics(batches, 20, ref, ex, "fid,pr")
    print("RESULT " + json.dumps(out), flush=True)
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _features(images):
    return (images.astype(np.float64) / 127.5 - 1.0).mean(axis=(1, 2)) * 3.0


def _same_rows(a, b):
    """Equal as multisets of rows: which process's images come first is the mesh's business."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a[np.lexsort(a.T)], b[np.lexsort(b.T)], rtol=1e-5, atol=1e-6)


def test_two_processes_extract_and_gather(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cache = str(tmp_path / "stats" / "ref.npz")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, str(script), str(i), port, cache], env=env, stdout=subprocess.PIPE,
                         stderr=open(tmp_path / f"err{i}", "w"), text=True)
        for i in range(2)
    ]  # fmt: skip
    results = []
    for i, p in enumerate(procs):
        stdout = p.communicate(timeout=240)[0]
        assert p.returncode == 0, (tmp_path / f"err{i}").read_text()[-3000:]
        line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT ") :]))
    images = np.random.default_rng(0).integers(0, 256, (2, 10, 6, 6, 3), dtype=np.uint8)
    for r in results:
        assert r["devices"] == 8
        _same_rows(r["local"], _features(np.concatenate([images[0, :3], images[1, :3]])))
        _same_rows(r["global"], _features(np.concatenate([images[0, :4], images[1, :4]])))
        np.testing.assert_allclose(r["ref_mu"], _features(images.reshape(20, 6, 6, 3)).mean(0), rtol=1e-5)
        assert r["cached_equal"]
        assert abs(r["fid_self"]["fid"]) < 1e-6 and r["fid_self"]["precision"] == r["fid_self"]["recall"] == 1.0
    assert results[0] == results[1]  # every process holds the same answers
    assert os.path.isfile(cache)
