"""What users deploy: the wheel built from this checkout, installed in a clean virtual environment
away from the source tree, holds every module and every Lua script, and its command runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("receiver", "tasks", "worker", "emulator", "recall_transcribe")
LEFT_BEHIND = (".git", ".venv", ".wheel", ".hypothesis", "build", "dist", "*.egg-info")
LEFT_BEHIND += ("__pycache__", ".*_cache", "data", "tests", "bench", "harness")

pytestmark = pytest.mark.system  # builds, installs and runs the wheel as processes

# Run inside the installed environment, from an empty directory with `-I` (isolated: neither the
# working directory nor PYTHONPATH on sys.path), so nothing can come from the checkout.
CHECK = """
import importlib, importlib.resources, importlib.util, json, sys
modules, scripts = json.loads(sys.argv[1])
found = {"missing": [], "outside": [], "scripts": []}
for name in modules:
    try:  # a __main__ is run, not imported: found is enough
        if name.endswith("__main__"):
            where = importlib.util.find_spec(name).origin
        else:
            where = importlib.import_module(name).__file__
    except (ImportError, AttributeError) as exc:
        found["missing"].append(f"{name}: {exc}")
        continue
    if not where.startswith(sys.prefix):
        found["outside"].append(f"{name}: {where}")
for package, resource in scripts:
    if not importlib.resources.files(package).joinpath(resource).is_file():
        found["scripts"].append(f"{package}/{resource}")
print(json.dumps(found))
"""


def source_modules() -> list[str]:
    """Every module of the top-level packages, as the source tree has them."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def source_scripts() -> list[tuple[str, str]]:
    """Every Lua script, as (its top-level package, its path inside that package)."""
    return [
        (package, path.relative_to(ROOT / package).as_posix())
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.lua"))
    ]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean virtual environment with the wheel built from this checkout installed in it
    (not editable): its bin directory."""
    where = tmp_path_factory.mktemp("wheel")
    # From a copy: a build/ left in the checkout would lend the wheel files the rules forgot.
    source = where / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFT_BEHIND))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(where), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = where.glob("recall_transcribe-*.whl")
    env = where / "venv"
    venv.create(env, with_pip=True)
    bin_dir = env / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    yield bin_dir


def test_every_module_and_lua_script_of_the_source_tree_is_in_the_installed_wheel(
    installed: Path, tmp_path: Path
) -> None:
    modules, scripts = source_modules(), source_scripts()
    assert "tasks.recall.client" in modules and ("tasks", "recall/limiter.lua") in scripts
    run = subprocess.run(
        [str(installed / "python"), "-I", "-c", CHECK, json.dumps([modules, scripts])],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"missing": [], "outside": [], "scripts": []}


def test_the_installed_command_runs(installed: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [str(installed / "recall-transcribe"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    for subcommand in ("receiver", "worker", "flower", "emulator", "up", "enqueue", "jobs"):
        assert subcommand in run.stdout
