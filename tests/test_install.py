"""`pip install .` of a clone into a fresh virtual environment, then use it from elsewhere.

The environment gets the CPU torch that ``scripts/setup.sh`` pins (torch is never a
dependency of the package), then the clone, installed (not editable) from a copy so the
build leaves nothing in the repository. From a directory outside the clone it runs the
README's Python API example on the embedded Fashion-MNIST models and every console
script's ``--help``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("migm-record", "migm-train", "migm-convert", "migm-sweep")
# Build and run outputs that a clone does not hold (see .gitignore).
NOT_IN_CLONE = shutil.ignore_patterns(".git", ".venv", ".cache", "runs", "out", "build", "dist", "__pycache__",
                                      ".pytest_cache", "*.egg-info")


def torch_pin() -> str:
    """The requirement scripts/setup.sh installs torch from (``TORCH_PIN`` overrides it there too)."""
    match = re.search(r'TORCH_PIN="\$\{TORCH_PIN:-([^}]+)\}"', (ROOT / "scripts" / "setup.sh").read_text())
    if not match:
        raise AssertionError("scripts/setup.sh no longer sets TORCH_PIN=\"${TORCH_PIN:-...}\"; update this test")
    return os.environ.get("TORCH_PIN") or match[1]


def readme_api_example() -> str:
    """The README's ``from shortcut_core import load_migm, load_shortcut, generate`` block."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if "from shortcut_core import load_migm, load_shortcut, generate" in b]
    if not found:
        raise AssertionError("README.md has no Python block importing load_migm, load_shortcut, generate")
    return found[0]


def run(args: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder, environment, a working directory outside the clone) of a fresh venv with the clone installed."""
    base = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    venv = base / "venv"
    run([sys.executable, "-m", "venv", venv], base, env)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    # --no-compile: byte-compile only what the checks import (most of torch never is).
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile"]
    run([*pip, torch_pin()], base, env, timeout=900)
    # Build in the venv itself (no isolated build environment to fetch), from a copy of the clone.
    run([*pip, "setuptools>=70.1"], base, env)  # bdist_wheel built in: no wheel package needed
    clone = base / "clone"
    shutil.copytree(ROOT, clone, ignore=NOT_IN_CLONE)
    run([*pip, "--no-build-isolation", clone], base, env)
    shutil.rmtree(clone)  # from here on only the installed package exists
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    yield bin_dir, env, elsewhere
    shutil.rmtree(base, ignore_errors=True)  # about 1 GB, mostly torch


def test_readme_api_example_runs_from_another_directory(installed):
    bin_dir, env, elsewhere = installed
    models = ROOT / "models"
    example = readme_api_example().replace('"models/', f'"{models.as_posix()}/')
    check = textwrap.dedent("""
        import importlib.metadata, shortcut_core, training.fmnist
        print("modules", shortcut_core.__file__, training.fmnist.__file__)
        files = importlib.metadata.files("migm-shortcut")
        print("top", *sorted({f.parts[0] for f in files if f.parts[0] != ".." and not f.parts[0].endswith(".dist-info")}))
        print("shapes", tuple(result.images.shape), str(result.images.dtype), tuple(result.tokens.shape),
              float(result.images.min()), float(result.images.max()))
    """)
    (elsewhere / "example.py").write_text(example + check)
    out = run([bin_dir / "python", "example.py"], elsewhere, env).stdout
    modules = next(line for line in out.splitlines() if line.startswith("modules")).split()[1:]
    venv = bin_dir.parent.resolve()
    for path in modules:  # the installed package, not the clone
        assert Path(path).resolve().is_relative_to(venv), (path, venv)
    top = next(line for line in out.splitlines() if line.startswith("top")).split()[1:]
    assert top == ["shortcut_core", "training"]  # not the pack's nodes/, tests/, scripts/, bench/ ...
    shapes = next(line for line in out.splitlines() if line.startswith("shapes"))
    assert shapes.startswith("shapes (3, 28, 28, 3) torch.float32 (3, 7, 7) "), shapes
    low, high = map(float, shapes.split()[-2:])
    assert 0.0 <= low <= high <= 1.0
    assert "base passes 5 (plain: 16)" in out


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_help(installed, script):
    bin_dir, env, elsewhere = installed
    out = run([bin_dir / script, "--help"], elsewhere, env, timeout=120).stdout
    assert out.startswith("usage:"), out[:200]


def test_editable_install_finds_the_packages(tmp_path):
    """``pip install -e .`` (setuptools once refused the flat layout); no torch needed to find the modules."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=NOT_IN_CLONE)
    run([sys.executable, "-m", "venv", tmp_path / "venv"], tmp_path, env)
    python = tmp_path / "venv" / ("Scripts" if os.name == "nt" else "bin") / "python"
    run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "setuptools>=70.1"], tmp_path, env)
    run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-build-isolation", "--no-deps",
         "-e", clone], tmp_path, env)
    # Parents of the probed modules must not import torch: shortcut_core is probed at the top level only.
    modules = ("shortcut_core", "training", "training.fmnist", "training.fmnist.sweep", "nodes", "tests")
    probe = f"import importlib.util as u; print(*[getattr(u.find_spec(m), 'origin', None) for m in {modules}])"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    origins = dict(zip(modules, run([python, "-c", probe], elsewhere, env).stdout.split()))
    for module in modules[:4]:
        assert Path(origins[module]).resolve().is_relative_to(clone.resolve()), origins
    assert origins["nodes"] == origins["tests"] == "None", origins  # the pack's other folders stay out
    for script in SCRIPTS:
        assert (python.parent / script).is_file(), script
    shutil.rmtree(tmp_path / "venv", ignore_errors=True)
