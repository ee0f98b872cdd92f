"""`ganjax data prepare|show`, a real two-process loader, and Grain worker processes."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "ganjax", "data", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_prepare_and_show_with_flags(tmp_path):
    flags = ["--dataset", "shapes", "--resolution", "16", "--num_images", "40", "--data_dir", str(tmp_path)]
    out = run_cli("prepare", *flags)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["splits"] == {"train": 40, "test": 4} and report["dataset"].startswith("ganjax_shapes/r16_n40")
    out = run_cli("show", *flags, "--n", "10", "--out", str(tmp_path / "grid.png"))
    assert out.returncode == 0, out.stderr[-2000:]
    grid = np.asarray(PIL.Image.open(tmp_path / "grid.png"))
    assert grid.shape == (3 * 16, 4 * 16, 3)  # 10 images on 3 rows of 4
    assert (grid[32:, 32:] == 0).all() and grid[:16, :16].std() > 5  # 2 empty cells; real scenes


def test_prepare_with_a_config_preset_and_bad_input(tmp_path):
    out = run_cli("prepare", "--config", "configs/gansformer.py:shapes32", "--config.data.num_images=30",
                  f"--config.data.data_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["dataset"].startswith("ganjax_shapes/r32_n30")
    out = run_cli("prepare", "--dataset", "imagenette_typo", "--data_dir", str(tmp_path))
    assert out.returncode != 0 and "data.dataset: unknown dataset 'imagenette_typo'" in out.stderr


def test_a_truncated_dataset_file_is_named_before_training(tmp_path):
    """A shard cut short (a failing disk, a partial copy) fails `data prepare` (and so training's prepare) with
    the file's path and what to do, instead of passing and stopping training later with a reader error."""
    flags = ["--dataset", "shapes", "--resolution", "16", "--num_images", "40", "--data_dir", str(tmp_path)]
    assert run_cli("prepare", *flags).returncode == 0
    shard = next(p for p in tmp_path.rglob("*-train.array_record-*"))
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    out = run_cli("prepare", *flags)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"ganjax data prepare: the prepared dataset is damaged: {shard} (train split)" in out.stderr
    assert "run `ganjax data prepare` again" in out.stderr


WORKER = textwrap.dedent("""
    import hashlib, json, sys
    import jax, numpy as np
    pid, port, data_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from ganjax import data
    from ganjax.config import base_config

    c = base_config()
    c.model.resolution, c.train.batch_size = 16, 8
    c.data.num_images, c.data.data_dir = 48, data_dir
    data.prepare(c)  # process 0 writes, process 1 waits and reuses it
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
    loader = data.make_loader(c, NamedSharding(mesh, P("data")))
    rows = []
    for _ in range(6):  # one epoch
        batch = next(loader)
        rows += [hashlib.sha1(np.asarray(s.data)[i].tobytes()).hexdigest() for s in batch.addressable_shards
                 for i in range(s.data.shape[0])]
        total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))(batch)  # a real global array
    print("RESULT", json.dumps({"rows": rows, "state": loader.get_state(), "shard": loader.shard_index,
                                "total": float(total), "tensorflow": "tensorflow" in sys.modules}), flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_real_processes_read_disjoint_halves(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    port = str(free_port())
    logs = [(open(tmp_path / f"out{i}", "w"), open(tmp_path / f"err{i}", "w")) for i in range(2)]  # no pipe stalls
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(tmp_path / "tfds")], env=env,
                              stdout=logs[i][0], stderr=logs[i][1]) for i in range(2)]
    try:
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outs = [((tmp_path / f"out{i}").read_text(), (tmp_path / f"err{i}").read_text()) for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    results = [json.loads(o.split("RESULT", 1)[1]) for o, _ in outs]
    assert [r["shard"] for r in results] == [0, 1]
    assert not any(r["tensorflow"] for r in results)  # TFDS prepared and read array_record without TF
    assert results[0]["state"] == results[1]["state"] and results[0]["state"]["step"] == 6
    assert results[0]["total"] == results[1]["total"]
    # each host's device shards hold 2 rows; over one epoch the hosts see disjoint halves of all 48 images
    images = [set(r["rows"]) for r in results]
    assert len(results[0]["rows"]) == 24 and len(images[0]) == len(images[1]) == 24 and not images[0] & images[1]


@pytest.mark.slow  # ~30 s: spawns Grain worker processes that import JAX
def test_grain_worker_processes_resume_exactly(tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import jax, numpy as np
        from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
        from ganjax import data
        from ganjax.config import base_config

        def main():
            c = base_config()
            c.model.resolution, c.train.batch_size = 16, 4
            c.data.num_images, c.data.data_dir, c.data.worker_count = 40, {str(tmp_path)!r}, 2
            data.prepare(c)
            mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
            sh = NamedSharding(mesh, P("data"))
            run = data.make_loader(c, sh)
            plain = data.make_loader(c.copy_and_resolve_references(), sh, process_index=0, process_count=1)
            for _ in range(3):
                run.next_local()
            state = json.loads(json.dumps(run.get_state()))
            want = [run.next_local() for _ in range(4)]
            run.close()
            again = data.make_loader(c, sh)
            again.set_state(state)
            got = [again.next_local() for _ in range(4)]
            again.close()
            c.data.worker_count = 0
            inproc = data.make_loader(c, sh, process_index=0, process_count=1)
            ref = [inproc.next_local() for _ in range(7)]
            print("OK", all(np.array_equal(a, b) for a, b in zip(want, got)),
                  all(np.array_equal(a, b) for a, b in zip(want, ref[3:])), flush=True)

        if __name__ == "__main__":
            main()
    """))
    out = subprocess.run([sys.executable, str(script)], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # resumed == uninterrupted, and worker processes give the same batches as the in-process pipeline
    assert "OK True True" in out.stdout, out.stdout[-2000:]
