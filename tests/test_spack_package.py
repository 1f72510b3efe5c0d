"""spack/: the rx-slurm recipe stays in step with pyproject.toml (parsed with ast; no Spack needed).

A dependency added to pyproject.toml and forgotten in package.py would install fine with pip and
break only at a site that installs with Spack, so the two are compared here.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPO = ROOT / "spack"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILD_RUN = frozenset({"build", "run"})


def calls(tree: ast.AST, name: str) -> list[tuple[ast.Call, frozenset[str] | None]]:
    """Every call of `name`, with the dependency types of an enclosing `with default_args(...)`."""
    found: list[tuple[ast.Call, frozenset[str] | None]] = []

    def visit(node: ast.AST, types: frozenset[str] | None) -> None:
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "default_args":
                    types = dep_types(call) or types
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == name:
            found.append((node, types))
        for child in ast.iter_child_nodes(node):
            visit(child, types)

    visit(tree, None)
    return found


def dep_types(call: ast.Call) -> frozenset[str] | None:
    for keyword in call.keywords:
        if keyword.arg == "type":
            value = ast.literal_eval(keyword.value)
            return frozenset([value] if isinstance(value, str) else value)
    return None


def recipe(name: str) -> ast.Module:
    return ast.parse((REPO / "packages" / name / "package.py").read_text())


def dependencies(tree: ast.AST) -> dict[str, tuple[str, frozenset[str]]]:
    """{package: (version range, types)}; Spack's default type is build+link."""
    deps = {}
    for call, outer in calls(tree, "depends_on"):
        spec = ast.literal_eval(call.args[0])
        name, _, versions = spec.partition("@")
        deps[name] = (versions, dep_types(call) or outer or frozenset({"build", "link"}))
    return deps


def versions(tree: ast.AST) -> list[str]:
    return [ast.literal_eval(call.args[0]) for call, _ in calls(tree, "version")]


def spack_name(requirement: str) -> tuple[str, str]:
    """`sqlite-utils>=4.0` -> ("py-sqlite-utils", "4.0:")."""
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9.]+))?", requirement)
    assert match, f"pyproject dependency {requirement!r}: only NAME or NAME>=X is translated"
    name = "py-" + re.sub(r"[_.]", "-", match.group(1).lower())
    return name, f"{match.group(2)}:" if match.group(2) else ""


RX = recipe("rx-slurm")
RX_DEPS = dependencies(RX)


def test_version_matches_pyproject() -> None:
    assert PYPROJECT["project"]["version"] in versions(RX)


def test_every_python_dependency_is_declared_for_build_and_run() -> None:
    # Spack installs the whole of rx-slurm, rxd too: the client's dependencies and the daemon's.
    daemon = PYPROJECT["project"]["optional-dependencies"]["daemon"]
    expected = dict(spack_name(r) for r in [*PYPROJECT["project"]["dependencies"], *daemon])
    declared = {
        name: versions_
        for name, (versions_, types) in RX_DEPS.items()
        if name.startswith("py-") and "run" in types
    }
    assert declared == expected
    for name in expected:
        assert RX_DEPS[name][1] == BUILD_RUN, f"{name} must be type=('build', 'run')"


def test_python_and_build_backend_floors_match_pyproject() -> None:
    python_floor = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert RX_DEPS["python"] == (f"{python_floor}:", BUILD_RUN)
    (backend,) = PYPROJECT["build-system"]["requires"]
    assert RX_DEPS["py-setuptools"] == (spack_name(backend)[1], frozenset({"build"}))


def test_slurm_and_apptainer_are_run_dependencies() -> None:
    for name in ("slurm", "apptainer"):
        assert RX_DEPS[name] == ("", frozenset({"run"}))


@pytest.mark.parametrize(
    "package", sorted(p.name for p in (REPO / "packages").iterdir() if p.is_dir())
)
def test_each_recipe_follows_spack_conventions(package: str) -> None:
    tree = recipe(package)
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    # Spack derives the class name from the directory: py-sqlite-utils -> PySqliteUtils.
    assert cls.name == "".join(part.capitalize() for part in package.split("-"))
    assert [getattr(base, "id", None) for base in cls.bases] == ["PythonPackage"]
    assert ast.get_docstring(cls)
    assert calls(tree, "license"), "every recipe names its license"
    for call, _ in calls(tree, "version"):
        sha = [k for k in call.keywords if k.arg == "sha256"]
        # rx-slurm itself is installed from a checkout (spack/README.md): no published sdist yet.
        if package != "rx-slurm":
            assert sha and re.fullmatch(r"[0-9a-f]{64}", ast.literal_eval(sha[0].value))


def test_dependencies_this_repository_provides_are_new_enough() -> None:
    """Packages shadowed or added here must offer a version inside rx-slurm's range."""
    for name, (wanted, _) in RX_DEPS.items():
        if not (REPO / "packages" / name).is_dir() or not wanted:
            continue
        floor = tuple(int(p) for p in wanted.rstrip(":").split("."))
        offered = [tuple(int(p) for p in v.split(".")) for v in versions(recipe(name))]
        assert any(v >= floor for v in offered), f"{name}: no version in {wanted}"


def test_repo_namespace() -> None:
    assert "namespace: rxslurm" in (REPO / "repo.yaml").read_text()
