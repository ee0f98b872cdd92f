"""`ganjax info`: the reference parameter counts of the named presets, without building weights."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_info(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "ganjax", "info", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    return out


def test_info_json_ffhq256():
    out = run_info("--config", "configs/gansformer.py:ffhq256", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["params"] == {"G_mapping": 44_352, "G_synthesis": 30_858_768, "G_latent_pos": 512,
                              "G_total": 30_903_632, "D": 28_864_129}
    assert info["num_ws"] == 15 and info["num_latents"] == 17
    assert info["attention_layers"][0] == "b4.conv1" and len(info["attention_layers"]) == 11


def test_info_table_clevr256_and_bad_field():
    out = run_info("--config", "configs/gansformer.py:clevr256")
    assert out.returncode == 0, out.stderr
    assert "G total           30,357,936" in out.stdout and "num_ws            15" in out.stdout
    bad = run_info("--config", "configs/gansformer.py:clevr256", "--config.model.heads=3")
    assert bad.returncode != 0 and "model.heads" in bad.stderr + bad.stdout
