"""`import ganjax` moves XLA:CPU's convolutions from YNNPACK to Eigen (ganjax/__init__.py)."""

import os
import subprocess
import sys

import ganjax


def test_flag_is_appended_and_a_users_choice_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    ganjax._cpu_convolutions_on_eigen()
    assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                               "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"]
    ganjax._cpu_convolutions_on_eigen()  # idempotent
    assert os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    ganjax._cpu_convolutions_on_eigen()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="


def _conv_hlo(import_ganjax):
    code = (("import ganjax\n" if import_ganjax else "") + "import jax, jax.numpy as jnp\n"
            "f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
            "dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
            "print(f.lower(jnp.ones((8, 32, 32, 128)), jnp.ones((3, 3, 128, 128))).compile().as_text())\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_a_fresh_process_compiles_convolutions_without_ynnpack():
    assert "ynn" in _conv_hlo(import_ganjax=False)  # jaxlib 0.10's default: a YNNPACK fusion
    hlo = _conv_hlo(import_ganjax=True)
    assert "convolution(" in hlo and "ynn" not in hlo
