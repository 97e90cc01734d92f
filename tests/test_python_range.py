"""The supported Python versions are decided once, in pyproject.toml, and everything else agrees."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRES = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]


def test_environment_yml_asks_conda_for_the_same_range():
    line = next(line for line in (ROOT / "environment.yml").read_text().splitlines() if "- python" in line)
    assert line.split("#")[0].strip() == f"- python{REQUIRES}"


def test_lesson_00_reads_the_range_from_pyproject():
    cells = json.loads((ROOT / "notebooks" / "00-setup-check.ipynb").read_text())["cells"]
    check = next("".join(c["source"]) for c in cells if "python_ok =" in "".join(c["source"]))
    assert '"requires-python"' in check and "(3, 11)" not in check


def test_make_refuses_an_interpreter_outside_the_range_naming_each_supported_version(tmp_path):
    """Run the Makefile against a pyproject whose range excludes this interpreter."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    running = sys.version_info[:2]
    lowest = f"3.{running[1] + 1}"
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nrequires-python = ">={lowest},<3.{running[1] + 3}"\n'
    )
    (tmp_path / "requirements.txt").touch()
    (tmp_path / "requirements-dev.txt").touch()
    done = subprocess.run(
        ["make", "-s", "install", f"PYTHON={sys.executable}", f"VENV={tmp_path / 'venv'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    names = f"3.{running[1] + 1} or 3.{running[1] + 2}"
    assert f"Python {names} is required, not {running[0]}.{running[1]}" in done.stderr
    assert "grpcio 1.59.0" in done.stderr
    assert not (tmp_path / "venv").exists(), "make created a virtual environment for a refused Python"


def test_make_finds_a_supported_interpreter_by_running_it(tmp_path):
    """A python3.12 on the PATH that fails to run (a pyenv shim for an unselected version) is passed over."""
    shim = tmp_path / "python3.12"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}
    found = subprocess.run(
        ["make", "-s", "--no-print-directory", "python-path", "VERSION=3.12"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert found != str(shim)
    assert not found or re.search(r"3\.12", found)


def test_with_no_working_python_3_11_make_takes_python_3_12(tmp_path):
    """As on Ubuntu 24.04: python3.11 missing (here: a name that fails), a python3.12 that runs."""
    real = subprocess.run(
        ["make", "-s", "--no-print-directory", "python-path", "VERSION=3.12"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    if not real:
        pytest.skip("no Python 3.12 on this machine")
    for name, target in (("python3.11", None), ("python3.12", real)):
        path = tmp_path / name
        if target is None:
            path.write_text("#!/bin/sh\nexit 127\n")
            path.chmod(0o755)
        else:
            path.symlink_to(target)
    env = {"PATH": f"{tmp_path}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    chosen = subprocess.run(
        ["make", "-s", "--no-print-directory", "python-path"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    version = subprocess.run(
        [chosen, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
    )
    assert version.stdout.strip() in ("(3, 12)", "(3, 11)"), chosen
    assert chosen != str(tmp_path / "python3.11")
