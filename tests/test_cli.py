"""`ganjax --help` lists the installed commands; every command's --help shows its own flags."""

import json
import os
import sys

import pytest

from ganjax import cli, presets
from subprocess_util import run_killing_group  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def ganjax(*args, timeout=300):
    return run_killing_group([sys.executable, "-m", "ganjax", *args], timeout, cwd=ROOT)


def test_the_subcommand_imports_name_every_command():
    """cli.py lists the command modules as (type-checking) imports: the same set as COMMANDS, each a module."""
    with open(cli.__file__) as f:
        lines = [line.split()[1] for line in f if line.strip().startswith("import ganjax.commands.")]
    imported = {name.rsplit(".", 1)[1] for name in lines}
    assert imported == set(cli.COMMANDS) == set(cli.available())


def test_top_level_help_lists_installed_commands():
    out = ganjax("--help")
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert listed == cli.available() and {"sweep", "convert"} <= set(listed)
    assert ganjax().returncode == 2  # no command: usage, exit 2
    bad = ganjax("trian")
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr


@pytest.mark.parametrize("name", cli.available())
def test_every_command_has_help(name):
    out = ganjax(name, "--help")
    assert out.returncode == 0, out.stderr
    assert f"ganjax {name}:" in out.stdout  # the command's own flags section
    assert out.stdout.count("\n  --") >= 1


@pytest.mark.slow  # compiles a train step (~1 min of CPU); .ci/run runs the slow tests of this file
def test_train_override_reaches_the_trainer(tmp_path):
    """A one-step `ganjax train`: command-line overrides are what the trainer resolved and recorded."""
    workdir = tmp_path / "run"
    out = ganjax("train", "--config=configs/gansformer.py:shapes32", f"--workdir={workdir}",
                 "--config.model.resolution=16", "--config.model.channel_base=256", "--config.model.channel_max=16",
                 "--config.model.attention_end_res=8", "--config.train.batch_size=8",
                 "--config.train.total_kimg=0.008", "--config.train.lr_g=0.0005", "--config.data.num_images=32",
                 f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.parallel.mesh_data=1", timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(workdir / "config.json") as f:
        resolved = json.load(f)
    assert resolved["train"]["lr_g"] == 0.0005 and resolved["model"]["channel_max"] == 16
    assert resolved["train"]["r1_gamma"] == presets.CPU["shapes32"]["r1_gamma"]  # untouched preset values survive
    # ... and the optimizers ran at them, with the reference's lazy-regularisation scaling: G at the overridden lr
    # x 4/5 (the path-length interval 4 counts even with path length off, as in the authors' and StyleGAN2-ADA's
    # loop), D at the preset's 0.002 x 16/17 (lazy R1 every 16)
    with open(workdir / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f if '"lr/g"' in line]
    assert logged and logged[-1]["lr/g"] == pytest.approx(0.0005 * 4 / 5, rel=1e-6)
    assert logged[-1]["lr/d"] == pytest.approx(0.002 * 16 / 17, rel=1e-6)


def test_bad_override_stops_train_before_compiling(tmp_path):
    out = ganjax("train", "--config=configs/gansformer.py:shapes32", f"--workdir={tmp_path}/w",
                 "--config.train.loss=foo")
    assert out.returncode != 0
    assert "config.train.loss: 'foo' is not one of ('logistic', 'hinge', 'relativistic')" in out.stderr
    assert not os.path.exists(tmp_path / "w" / "checkpoints")
    assert "Traceback" not in out.stderr and out.returncode == 2  # the message, not a stack


def test_unknown_override_field_is_one_line_naming_the_nearest(tmp_path):
    out = ganjax("train", "--config=configs/gansformer.py:shapes32", f"--workdir={tmp_path}/w",
                 "--config.augmnt.mode=ada", "--config.train.r1_gama=1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--config.augmnt.mode: config has no field 'augmnt' (did you mean 'augment'?)" in out.stderr
    assert "--config.train.r1_gama: config.train has no field 'r1_gama' (did you mean 'r1_gamma'?)" in out.stderr
    assert not os.path.exists(tmp_path / "w")


def test_importing_ganjax_starts_no_jax_backend():
    """Commands set the CPU device count and libtpu's environment after importing ganjax's modules: an import
    that computes with JAX (a module-level jnp constant) would start the backends first and break them."""
    code = ("import ganjax.train.loop, ganjax.bench.run, ganjax.plan.compile, ganjax.evaluate, ganjax.augment.ops\n"
            "from jax._src import xla_bridge\n"
            "assert not xla_bridge.backends_are_initialized(), 'a module started the JAX backends at import'\n")
    out = run_killing_group([sys.executable, "-c", code], 120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
