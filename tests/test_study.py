"""Scaling studies (ganjax/study, `ganjax report`, the compute-matched sweeps): the power-law fit against
points made with known parameters, the frontier, the report over finished, failed, unfinished and FID-less
runs and over runs of two FID protocols, and the bad inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ganjax import sweep
from ganjax.checkpoint.trees import config_to_dict
from ganjax.config import base_config
from ganjax.study import figures, law, runs as study_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("a, b, c", [(120.0, 0.45, 30.0), (8.0, 1.2, 2.5), (400.0, 0.2, 0.0)])
def test_the_fit_recovers_known_parameters(a, b, c):
    compute = np.geomspace(0.01, 10.0, 9)
    fit = law.fit_power_law(compute, a * compute ** -b + c)
    assert fit.ok, fit.problem
    assert fit.a == pytest.approx(a, rel=1e-4) and fit.b == pytest.approx(b, rel=1e-4)
    assert fit.c == pytest.approx(c, rel=1e-4, abs=1e-3 * a)
    assert fit.rms_residual < 1e-6 * (a + c)


def test_the_fit_on_noisy_points_lands_within_its_uncertainty():
    rng = np.random.default_rng(0)
    compute = np.geomspace(0.01, 10.0, 24)
    a, b, c = 120.0, 0.45, 30.0
    hits = []
    for _ in range(20):
        fid = a * compute ** -b + c + rng.normal(0, 2.0, compute.shape)
        fit = law.fit_power_law(compute, fid)
        assert fit.ok, fit.problem
        assert fit.rms_residual == pytest.approx(2.0, rel=0.5)
        hits.append(abs(fit.b - b) <= 2 * fit.b_err)
    assert np.mean(hits) >= 0.8  # ~95% of the time within two standard errors


@pytest.mark.parametrize("compute, fid, problem", [
    ([1, 2, 4], [100, 80, 70], "3 points for 3 parameters"),
    ([1, 2], [100, 80], "2 points for 3 parameters"),
    ([1, 2, 4, 8, 16], [50, 60, 70, 80, 90], "does not fall with compute|not determined|do not determine"),
    ([1, 2, 4, 8, 16, 32], [100, 20, 140, 30, 120, 25], "rms residual|not determined|do not determine|bound"),
])
def test_a_bad_fit_is_reported_as_one(compute, fid, problem):
    fit = law.fit_power_law(compute, fid)
    assert not fit.ok
    assert __import__("re").search(problem, fit.problem), fit.problem
    assert "bad fit" in fit.describe()


def test_a_parameter_with_a_standard_error_above_its_value_makes_a_bad_fit():
    # the GANsformer-l points of the shapes32 study (session 8): a small residual, but a and c undetermined
    compute = [0.00701, 0.01402, 0.02102, 0.02803, 0.03504]
    fit = law.fit_power_law(compute, [321.7, 313.6, 298.5, 238.5, 213.6])
    assert not fit.ok and "more than itself" in fit.problem


def test_the_frontier_keeps_the_best_fid_so_far_and_its_run():
    points = [(1, 100, "a"), (2, 90, "a"), (4, 85, "a"), (1.5, 95, "b"), (3, 70, "b"), (8, 72, "b"), (8, 60, "a")]
    assert law.frontier(points) == [(1, 100, "a"), (1.5, 95, "b"), (2, 90, "a"), (3, 70, "b"), (8, 60, "a")]


# ---------------------------------------------------------------------------------------------------------
# The report over workdirs as the trainer leaves them

def _config(family="gansformer", num_images=1000, pflops=1.0):
    c = base_config()
    c.train.total_kimg, c.train.total_pflops = 0.0, pflops
    c.eval.num_images = num_images
    if family == "stylegan2":
        c.model.num_local, c.model.attention = 0, "none"
    return c


def write_run(directory, name, config, fids, pflops_per_step=0.1, steps_per_eval=4, last_step=None):
    """A workdir as `ganjax train` writes it: config.json, hardware.json, metrics.jsonl (train records with an
    FID record every steps_per_eval steps)."""
    workdir = os.path.join(directory, name)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config_to_dict(config), f)
    with open(os.path.join(workdir, "hardware.json"), "w") as f:
        json.dump({"hardware": "2 x cpu on test CPU", "devices": 2, "processes": 1}, f)
    last_step = last_step if last_step is not None else steps_per_eval * len(fids)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step in range(1, last_step + 1):
            record = {"step": step, "kimg": step * 0.032, "compute/pflops": step * pflops_per_step,
                      "compute/device_seconds": 36.0 * step, "compute/device_hours": step / 100}
            if step % steps_per_eval == 0 and step // steps_per_eval <= len(fids):
                record["fid"] = fids[step // steps_per_eval - 1]
            f.write(json.dumps(record) + "\n")
        f.write('{"step": 99, "fi')  # a torn last line
    return workdir


@pytest.fixture
def study(tmp_path):
    d = str(tmp_path / "sweep")
    os.makedirs(d)
    # Budget 1.0 PFLOPs: 10 steps of 0.1 for GANsformer, 5 of 0.2 for StyleGAN2.
    write_run(d, "000-gansformer", _config(), [150.0, 110.0, 90.0, 80.0, 75.0], steps_per_eval=2)
    write_run(d, "001-stylegan2", _config("stylegan2"), [120.0, 70.0], pflops_per_step=0.2, steps_per_eval=2,
              last_step=5)
    write_run(d, "002-stalled", _config(), [200.0], steps_per_eval=3, last_step=4)
    write_run(d, "003-no-eval", _config(), [], last_step=10)
    with open(os.path.join(d, "sweep.json"), "w") as f:
        json.dump([{"name": "002-stalled", "status": "failed(1)", "workdir": "elsewhere/002-stalled"},
                   {"name": "000-gansformer", "status": "done", "workdir": "x"}], f)
    return d


def test_runs_are_read_with_status_protocol_group_and_fid_points(study):
    found = {r.name: r for r in study_runs.find_runs([study])}
    assert sorted(found) == ["000-gansformer", "001-stylegan2", "002-stalled", "003-no-eval"]
    assert {k: r.status for k, r in found.items()} == {
        "000-gansformer": "finished", "001-stylegan2": "finished", "002-stalled": "failed",
        "003-no-eval": "finished"}
    g = found["000-gansformer"]
    assert g.group == "GANsformer" and found["001-stylegan2"].group == "StyleGAN2"
    assert g.protocol == "FID-1k, shapes 32x32, pytorch-fid"
    assert [(p["step"], p["fid"]) for p in g.points] == [(2, 150.0), (4, 110.0), (6, 90.0), (8, 80.0), (10, 75.0)]
    assert g.points[-1]["pflops"] == pytest.approx(1.0) and g.points[-1]["wall_hours"] == pytest.approx(0.05)
    assert found["003-no-eval"].points == [] and g.hardware == "2 x cpu on test CPU"
    grouped = study_runs.find_runs([study], ["family", "model.num_local"])
    assert grouped[0].group == "GANsformer, num_local=16"
    with pytest.raises(ValueError, match="no field 'model.nope'"):
        study_runs.find_runs([study], ["model.nope"])


def test_the_report_writes_curves_frontier_fits_and_tables(study, tmp_path):
    runs = study_runs.find_runs([study])
    analysis = figures.analyse(runs)
    out = str(tmp_path / "report")
    paths = figures.write_report(analysis, out, study_runs.warnings(runs))
    for name in ("fid_vs_compute", "fid_vs_wall", "fid_vs_kimg"):
        with open(paths[name], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    (panel,) = analysis.values()
    # GANsformer 150, 110, 90, 80, 75 at 0.2 .. 1.0 PFLOPs; StyleGAN2 120 at 0.4 and 70 at 0.8; stalled 200 at 0.3
    assert [(round(c, 6), f, r) for c, f, r in panel["frontier"]] == [
        (0.2, 150.0, "000-gansformer"), (0.4, 110.0, "000-gansformer"), (0.6, 90.0, "000-gansformer"),
        (0.8, 70.0, "001-stylegan2")]
    fits = panel["fits"]
    assert fits["GANsformer"].points == 6 and fits["StyleGAN2"].points == 2 and not fits["StyleGAN2"].ok
    rows = {r["run"]: r for r in figures.run_rows(analysis)}
    assert rows["003-no-eval"]["evaluations"] == 0 and "no FID records" in rows["003-no-eval"]["note"]
    assert rows["002-stalled"]["status"] == "failed" and rows["000-gansformer"]["best FID"] == 75.0
    md = open(paths["report.md"]).read()
    assert "FID-1k, shapes 32x32, pytorch-fid" in md and "2 x cpu on test CPU" in md
    assert "1 run(s) have no FID records" in md and "bad fit" in md
    assert "<img src='fid_vs_compute.png'" in open(paths["report.html"]).read()
    assert len(open(paths["points.csv"]).read().splitlines()) == 1 + 5 + 2 + 1


def test_two_fid_protocols_get_separate_panels_and_a_warning(tmp_path):
    d = str(tmp_path / "mixed")
    os.makedirs(d)
    write_run(d, "a", _config(num_images=1000), [100.0, 80.0])
    write_run(d, "b", _config(num_images=10000), [90.0, 70.0])
    runs = study_runs.find_runs([d])
    analysis = figures.analyse(runs)
    assert sorted(analysis) == ["FID-10k, shapes 32x32, pytorch-fid", "FID-1k, shapes 32x32, pytorch-fid"]
    assert all(len(p["runs"]) == 1 for p in analysis.values())
    (warning,) = study_runs.warnings(runs)
    assert "2 FID protocols" in warning and "not comparable" in warning


def _report_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "ganjax", "report", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def test_the_report_command_and_its_bad_inputs(study, tmp_path):
    proc = _report_cli(study)
    assert proc.returncode == 0, proc.stderr
    assert "fit GANsformer (FID-1k, shapes 32x32, pytorch-fid): " in proc.stdout
    assert "fit StyleGAN2" in proc.stdout and "bad fit (2 points for 3 parameters)" in proc.stdout
    assert os.path.exists(os.path.join(study, "report", "report.html"))
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _report_cli(str(empty))
    assert proc.returncode != 0 and "no runs in" in proc.stderr and not os.listdir(empty)
    proc = _report_cli(study, str(empty))
    assert proc.returncode != 0 and "--out is required" in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# The compute-matched sweeps of configs/gansformer.py

def _sweep_commands(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "ganjax", "sweep", "--config", "configs/gansformer.py:shapes32",
                           "--workdir", "/nonexistent/sweep", "--print_commands", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_the_study_sweeps_train_every_run_to_one_budget():
    from ganjax.models import ModelConfig
    from ganjax.train.cost import train_flops_per_image

    config = __import__("configs.gansformer", fromlist=["get_config"]).get_config("shapes32")
    images = config.train.total_kimg * 1000  # the preset's length
    budget = images * train_flops_per_image(ModelConfig.from_config(config.model), config.train) / 1e15
    families = _sweep_commands("--sweep", "gansformer_vs_stylegan2")
    assert [line.split()[4:6] for line in families] == [
        ["--config=configs/gansformer.py:shapes32", "--workdir=/nonexistent/sweep/000-gansformer"],
        ["--config=configs/stylegan2.py:shapes32", "--workdir=/nonexistent/sweep/001-stylegan2"]]
    sizes = _sweep_commands("--sweep", "sizes", "--config.eval.at_fractions=0.5,1")
    assert [line.split()[4] for line in sizes] == [f"--config=configs/gansformer.py:shapes32,size={s}"
                                                   for s in "sml"]
    for line in families + sizes:
        assert f"--config.train.total_pflops={budget!r}" in line and "--config.train.total_kimg=0.0" in line
    assert all("--config.eval.at_fractions=0.25,0.5,1" in line for line in families)
    assert all("--config.eval.at_fractions=0.5,1" in line for line in sizes)
    given = _sweep_commands("--sweep", "sizes", "--config.train.total_pflops=0.5")
    assert all("--config.train.total_pflops=0.5 " in line for line in given)


def test_run_config_arg_and_names_of_the_special_keys():
    assert sweep.run_config_arg("configs/gansformer.py:shapes32,size=m", {sweep.PRESET: {"size": "s"}}) == \
        "configs/gansformer.py:shapes32,size=s"
    assert sweep.run_config_arg("configs/gansformer.py:ffhq256", {sweep.CONFIG_FILE: "stylegan2.py"}) == \
        "configs/stylegan2.py:ffhq256"
    runs = [{"a": 1, "b": 2}, {"a": 1, "b": 3}]
    assert sweep.varying(runs) == [{"b": 2}, {"b": 3}]
    assert sweep.run_name(0, {sweep.CONFIG_FILE: "stylegan2.py", sweep.PRESET: {"size": "l"}}) == "000-stylegan2,size=l"
