"""`pip install .` (not editable) gives a working `planner`: the wheel carries the Alembic scripts and
the data files, and its console script upgrades a database and reads the price book outside the checkout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache",
                              ".hypothesis", "tests", "bench", "runs", "*.db", "*.db-*")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the working tree, installed alone into a directory outside it (its
    dependencies come from this interpreter's site-packages)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=SKIP, symlinks=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(work / "dist"), str(source)], check=True, timeout=180, capture_output=True)
    [wheel] = (work / "dist").glob("planner-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "planner/migrations/env.py" in names and "planner/migrations/script.py.mako" in names
    assert any(n.startswith("planner/migrations/versions/0001_") for n in names)
    assert not any(n.startswith(("migrations/", "tests/")) for n in names)
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                    str(target), str(wheel)], check=True, timeout=180, capture_output=True)
    return target


def run(installed: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(installed), "PYTHONSAFEPATH": "1"}
    return subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)


def test_the_installed_wheel_upgrades_and_shows_prices(installed, tmp_path):
    where = run(installed, tmp_path, sys.executable, "-c",
                "import planner, pricing, jobs, pricing.db as d; print(planner.__file__, d.migrations_dir())")
    assert where.returncode == 0, where.stderr
    assert all(str(installed) in p for p in where.stdout.split()), where.stdout  # not the checkout
    planner = str(installed / "bin" / "planner")
    upgrade = run(installed, tmp_path, planner, "db", "upgrade", "--json")
    assert upgrade.returncode == 0, upgrade.stderr
    assert json.loads(upgrade.stdout)["before"] is None and json.loads(upgrade.stdout)["after"]
    shown = run(installed, tmp_path, planner, "prices", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == [] and "planner prices refresh" in shown.stderr
