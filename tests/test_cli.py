"""`ganjax --help` lists the installed commands; every command's --help shows its own flags."""

import subprocess
import sys

import pytest

from ganjax import cli


def ganjax(*args):
    return subprocess.run([sys.executable, "-m", "ganjax", *args], capture_output=True, text=True, timeout=120)


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
