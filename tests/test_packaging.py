"""Release hygiene: the wheel builds with the oldest setuptools pyproject.toml allows, and carries
the license it declares.

Distribution and Spack builds use the build backend they have (no isolation), so the floor in
`[build-system] requires` must be one that really builds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "results")


def setuptools_floor() -> str:
    (requirement,) = [
        r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")
    ]
    match = re.fullmatch(r"setuptools>=([0-9.]+)", requirement)
    assert match, f"the setuptools requirement {requirement!r} must be a plain floor"
    return match.group(1)


def test_license_file_matches_the_declared_license() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_no_pyslurm_extra() -> None:
    # PyPI's pyslurm builds only against the Slurm release of its own number (README "Install").
    assert "pyslurm" not in PYPROJECT["project"].get("optional-dependencies", {})


def test_changelog_has_the_current_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {PYPROJECT['project']['version']}" in changelog


@pytest.mark.slow
def test_wheel_builds_with_the_oldest_allowed_setuptools(tmp_path: Path) -> None:
    floor = setuptools_floor()
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", f"setuptools=={floor}", "build"],
        check=True,
    )
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    # --no-isolation: build with this setuptools, as distribution and Spack builds do.
    built = subprocess.run(
        [python, "-m", "build", "--no-isolation", "--outdir", tmp_path / "dist", source],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert b"License-Expression: Apache-2.0" in metadata
    assert "rxslurm/slurm/templates/holder.sh" in names
    # A namespace package: one import tree from four folders, and no rxslurm/__init__.py in it.
    assert "rxslurm/__init__.py" not in names
    for module in (
        "daemon/main.py",
        "cli/fastpath.py",
        "slurm/adapter.py",
        "protocol/__init__.py",
        "agent/main.py",
    ):
        assert f"rxslurm/{module}" in names
    # The SDK ships typed (PEP 561).
    assert {"rxslurm/sdk/container.py", "rxslurm/sdk/py.typed"} <= set(names)


PORTIONS = ("daemon", "slurm", "cli", "protocol", "agent")


def test_every_package_folder_is_listed_for_setuptools() -> None:
    # setuptools' find cannot take several roots of one namespace, so pyproject lists packages.
    on_disk = {
        ".".join(init.parent.relative_to(ROOT / top).parts)
        for top in PORTIONS
        for init in (ROOT / top / "rxslurm").rglob("__init__.py")
    }
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == on_disk


def test_no_portion_claims_the_namespace() -> None:
    # An rxslurm/__init__.py in one folder would hide the other three from Python and from mypy.
    assert [top for top in PORTIONS if (ROOT / top / "rxslurm" / "__init__.py").exists()] == []
