"""Sweep building blocks, the results table and plot, --print_commands, and a 2-run sweep end to end."""

import csv
import json
import os
import sys

import pytest

from ganjax import sweep
from ganjax.config import base_config
from subprocess_util import run_killing_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grid_and_zipped():
    g = sweep.grid({"train.lr_g": [1e-3, 2e-3], "model.heads": [1, 2, 4]})
    assert len(g) == 6
    assert g[0] == {"train.lr_g": 1e-3, "model.heads": 1} and g[-1] == {"train.lr_g": 2e-3, "model.heads": 4}
    assert [r["model.heads"] for r in g[:3]] == [1, 2, 4]  # last key varies fastest
    z = sweep.zipped({"train.lr_g": [1e-3, 2e-3], "train.lr_d": [3e-3, 4e-3]})
    assert z == [{"train.lr_g": 1e-3, "train.lr_d": 3e-3}, {"train.lr_g": 2e-3, "train.lr_d": 4e-3}]
    with pytest.raises(ValueError, match="same length"):
        sweep.zipped({"a": [1], "b": [1, 2]})
    with pytest.raises(ValueError, match="sweep axis 'a': expected a non-empty list"):
        sweep.grid({"a": 3})


def test_apply_and_command_line():
    c = base_config()
    d = sweep.apply(c, {"train.lr_g": 0.001, "model.heads": 2, "data.mirror": True})
    assert (d.train.lr_g, d.model.heads, d.data.mirror) == (0.001, 2, True)
    assert (c.train.lr_g, c.model.heads) == (0.002, 1)  # the original is untouched
    with pytest.raises(ValueError, match="config has no field 'train.lr'"):
        sweep.apply(c, {"train.lr": 0.1})
    with pytest.raises(ValueError, match="config has no field 'trian'"):
        sweep.apply(c, {"trian.lr_g": 0.1})
    argv = sweep.train_command("configs/gansformer.py:shapes32", "w/000", {"train.lr_g": 0.001, "data.mirror": False})
    assert argv == ["python", "-m", "ganjax", "train", "--config=configs/gansformer.py:shapes32", "--workdir=w/000",
                    "--config.train.lr_g=0.001", "--config.data.mirror=false"]
    assert sweep.run_name(3, {"model.attention": "simplex", "model.heads": 2}) == "003-attention=simplex,heads=2"
    assert sweep.run_name(0, {"data.folder": "/a b/c"}) == "000-folder=_a_b_c"


def _fake_run(tmp_path, name, overrides, records, status="done"):
    workdir = tmp_path / name
    workdir.mkdir()
    with open(workdir / "metrics.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write('{"step": 9, "loss_')  # a run killed mid-write: the partial line is ignored
    return dict(name=name, overrides=overrides, workdir=str(workdir), status=status)


def test_collect_table_and_plot(tmp_path):
    runs = [
        _fake_run(tmp_path, "a", {"model.attention": "official", "model.heads": 1},
                  [{"step": 1, "loss_g": 3.0}, {"kind": "eval", "step": 2, "kimg": 0.5, "fid": 90.0},
                   {"step": 3, "loss_g": 2.0}]),
        _fake_run(tmp_path, "b", {"model.attention": "official", "model.heads": 2},
                  [{"step": 3, "loss_g": 1.5, "timing": {"sec_per_kimg": 4.0}}]),
        _fake_run(tmp_path, "c", {"model.attention": "simplex", "model.heads": 1}, [{"step": 3, "loss_g": 1.0}]),
    ]
    assert sweep.final_metrics(runs[0]["workdir"]) == {"step": 3, "loss_g": 2.0, "kimg": 0.5, "fid": 90.0}
    columns, rows = sweep.collect(runs)
    assert columns == ["run", "status", "model.attention", "model.heads", "fid", "kimg", "loss_g", "step",
                       "timing/sec_per_kimg"]
    assert [r["loss_g"] for r in rows] == [2.0, 1.5, 1.0]
    assert rows[1]["fid"] == "" and rows[1]["timing/sec_per_kimg"] == 4.0

    sweep.write_csv(tmp_path / "sweep.csv", columns, rows)
    with open(tmp_path / "sweep.csv") as f:
        back = list(csv.DictReader(f))
    assert [(r["run"], r["model.heads"], r["loss_g"]) for r in back] == [("a", "1", "2.0"), ("b", "2", "1.5"),
                                                                         ("c", "1", "1.0")]
    sweep.write_markdown(tmp_path / "sweep.md", columns, rows)
    md = (tmp_path / "sweep.md").read_text().splitlines()
    assert md[0] == "| run | status | model.attention | model.heads | fid | kimg | loss_g | step | timing/sec_per_kimg |"
    assert md[2] == "| a | done | official | 1 | 90 | 0.5 | 2 | 3 |  |" and len(md) == 5

    params = ["model.attention", "model.heads"]
    for param in params:  # numeric and categorical x axes
        out = sweep.plot(str(tmp_path / f"p_{param}.png"), rows, "loss_g", param, params)
        with open(out, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="--plot_metric 'nosuch' is not among the runs' final metrics"):
        sweep.plot(str(tmp_path / "x.png"), rows, "nosuch", "model.heads", params)
    with pytest.raises(ValueError, match="--plot_param 'train.lr_g' is not a swept field"):
        sweep.plot(str(tmp_path / "x.png"), rows, "loss_g", "train.lr_g", params)


def ganjax(*args, timeout=120):
    return run_killing_group([sys.executable, "-m", "ganjax", *args], timeout, cwd=ROOT)


def test_print_commands_one_per_run(tmp_path):
    out = ganjax("sweep", "--config=configs/gansformer.py:shapes32", f"--workdir={tmp_path}", "--print-commands",
                 "--config.train.total_kimg=0.5", "--config.model.heads=4")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4
    assert lines[3] == (f"{sys.executable} -m ganjax train --config=configs/gansformer.py:shapes32 "
                        f"--workdir={tmp_path}/003-attention=simplex,heads=2 --config.train.total_kimg=0.5 "
                        f"--config.model.attention=simplex --config.model.heads=2")  # the sweep's heads win
    assert not os.listdir(tmp_path)  # nothing ran
    out = ganjax("sweep", "--config=configs/gansformer.py:shapes32", f"--workdir={tmp_path}", "--print_commands",
                 "--launcher=sbatch --nodes=2 launch/slurm.sbatch")
    assert out.stdout.splitlines()[0] == (f"sbatch --nodes=2 launch/slurm.sbatch "
                                          f"--config=configs/gansformer.py:shapes32 "
                                          f"--workdir={tmp_path}/000-attention=official,heads=1 "
                                          f"--config.model.attention=official --config.model.heads=1")


def test_a_bad_run_fails_the_sweep_before_anything_starts(tmp_path):
    cfg = tmp_path / "bad.py"
    cfg.write_text(f"import sys; sys.path.insert(0, {ROOT!r})\n"
                   "from ganjax.config import base_config\nfrom ganjax import sweep\n"
                   "def get_config(arg=None):\n    return base_config()\n"
                   "def get_sweep(arg=None):\n    return sweep.grid({'train.loss': ['logistic', 'foo']})\n")
    out = ganjax("sweep", f"--config={cfg}", f"--workdir={tmp_path}/w")
    assert out.returncode != 0
    assert "run 1 {'train.loss': 'foo'}" in out.stderr
    assert "config.train.loss: 'foo' is not one of ('logistic', 'hinge', 'relativistic')" in out.stderr
    assert not os.path.exists(tmp_path / "w")


TINY_SWEEP = """
import importlib.util
from ganjax import sweep

_spec = importlib.util.spec_from_file_location("g", {gansformer!r})
_g = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_g)


def get_config(arg=None):
    c = _g.get_config("shapes32")
    c.model.resolution, c.model.channel_base, c.model.channel_max = 16, 256, 16
    c.model.attention_end_res = 8
    c.train.batch_size, c.train.total_kimg = 8, 0.016  # 2 steps
    c.train.r1_interval = 0  # every step the same phases: one compile per run
    c.train.sample_every_kimg, c.train.log_every, c.train.sample_grid = 0.008, 1, 4
    c.checkpoint.every_kimg = 0.016
    c.data.num_images = 64
    return c


def get_sweep(arg=None):
    return sweep.grid({{"train.lr_g": [0.001, 0.002]}})
"""


@pytest.mark.slow  # compiles a train step (~1 min of CPU); .ci/run runs the slow tests of this file
def test_two_point_sweep_end_to_end(tmp_path):
    cfg = tmp_path / "tiny.py"
    cfg.write_text(TINY_SWEEP.format(gansformer=os.path.join(ROOT, "configs", "gansformer.py")))
    workdir = tmp_path / "sweep"
    out = ganjax("sweep", f"--config={cfg}", f"--workdir={workdir}", "--plot_metric=step",
                 "--plot_param=train.lr_g", "--config.parallel.mesh_data=1",
                 f"--config.data.data_dir={tmp_path / 'tfds'}", timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    with open(workdir / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["status"], float(r["train.lr_g"])) for r in rows] == [
        ("000-lr_g=0.001", "done", 0.001), ("001-lr_g=0.002", "done", 0.002)]
    assert all(int(float(r["step"])) == 2 for r in rows)
    for run in ("000-lr_g=0.001", "001-lr_g=0.002"):  # each run trained with its own value
        with open(workdir / run / "config.json") as f:
            resolved = json.load(f)
        assert resolved["train"]["lr_g"] == float(run.rsplit("=", 1)[1])
        assert resolved["parallel"]["mesh_data"] == 1  # the sweep's own override reached every run
    assert (workdir / "sweep.md").read_text().count("\n") == 4
    assert (workdir / "sweep_step.png").read_bytes()[:4] == b"\x89PNG"


def test_failed_runs_are_reported_and_fail_the_sweep(tmp_path):
    """Both runs fail fast (an unknown TFDS dataset, found after validation): the sweep runs the second
    anyway, records both in the table and exits non-zero naming them."""
    cfg = tmp_path / "failing.py"
    cfg.write_text("from ganjax.config import base_config\nfrom ganjax import sweep\n"
                   "def get_config(arg=None):\n    c = base_config()\n    c.data.dataset = 'no_such_dataset_xyz'\n"
                   "    return c\n"
                   "def get_sweep(arg=None):\n    return sweep.grid({'train.lr_g': [0.001, 0.002]})\n")
    out = ganjax("sweep", f"--config={cfg}", f"--workdir={tmp_path}/w", "--plot_metric=G/loss", timeout=600)
    assert out.returncode == 1
    assert "2 of 2 runs failed: ['000-lr_g=0.001', '001-lr_g=0.002']" in out.stderr
    assert "no plot: --plot_metric 'G/loss' is not among the runs' final metrics" in out.stderr
    with open(tmp_path / "w" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["status"]) for r in rows] == [("000-lr_g=0.001", "failed(1)"), ("001-lr_g=0.002", "failed(1)")]
    assert "no_such_dataset_xyz" in (tmp_path / "w" / "000-lr_g=0.001" / "sweep_run.log").read_text()
