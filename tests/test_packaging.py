"""Packaging: a wheel built from the repo (what `pip install .` installs) carries every Hydra config and hub config."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pdspace.archs import HUB_IDS, hub_config_file

ROOT = Path(__file__).resolve().parents[1]
# what the build reads; a copy of just these keeps build/ and *.egg-info out of the shared checkout
SOURCES = ["pyproject.toml", "README.md", "conf", "pdspace", "hydra_plugins"]


def _setuptools_builds_here() -> bool:
    """Whether this setuptools meets [build-system] (>=69) and can build a wheel without an isolated env."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    import setuptools

    version = tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])
    # bdist_wheel moved into setuptools in 70.1; before that it needs the `wheel` package
    return version >= (70, 1) or (version >= (69, 0) and importlib.util.find_spec("wheel") is not None)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel of a copy of the repo (symlinks kept: pdspace/conf -> ../conf)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "out"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    # a fresh venv's setuptools (from ensurepip) is too old: pip then builds in an isolated env, one PyPI download
    isolation = ["--no-build-isolation"] if _setuptools_builds_here() else []
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), *isolation, str(src)]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (built,) = out.glob("pdspace-*.whl")
    with zipfile.ZipFile(built) as z:
        yield z


def _under(z: zipfile.ZipFile, prefix: str) -> set[str]:
    return {n.removeprefix(prefix) for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")}


def test_wheel_ships_every_hydra_config_at_any_depth(wheel):
    conf = ROOT / "conf"
    expected = {p.relative_to(conf).as_posix() for p in conf.rglob("*.yaml")}
    assert "hydra/launcher/joblib.yaml" in expected
    assert _under(wheel, "pdspace/conf/") == expected
    for rel in sorted(expected):
        assert wheel.read(f"pdspace/conf/{rel}") == (conf / rel).read_bytes(), rel


def test_wheel_ships_the_hub_configs(wheel):
    shipped = {p.name for p in (ROOT / "pdspace" / "hub_configs").glob("*.json")}
    assert shipped == {hub_config_file(repo).name for repo in HUB_IDS}
    assert _under(wheel, "pdspace/hub_configs/") == shipped
