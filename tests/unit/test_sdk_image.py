"""The SDK's Image without rxd: a builder chain renders one Apptainer definition whose digest
names its draft and build (equal chains, one name; any change, another), every word quoted; and
run() of a chain finds its succeeded build instead of building again (a stand-in client)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli.client import ApiError
from rxslurm.sdk import BadRequest, BuildFailed, Container, Image, RxError

packages = st.lists(
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1).filter(
        str.strip
    ),
    min_size=1,
    max_size=3,
)
names = st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: (
        not n.startswith(("SLURM_", "LD_", "APPTAINER", "SINGULARITY", "RXSLURM_"))
        and n not in ("HOME", "USER", "LOGNAME", "PATH", "PWD", "TERM", "ENV", "BASH_ENV")
    )
)
values = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)


@st.composite
def chains(draw: st.DrawFn) -> Image:
    image = Image.from_registry("python:3.12-slim")
    for kind in draw(st.lists(st.sampled_from(["apt", "pip", "run", "env"]), max_size=4)):
        if kind == "apt":
            image = image.apt_install(*draw(packages))
        elif kind == "pip":
            image = image.pip_install(*draw(packages))
        elif kind == "run":
            image = image.run_commands(*draw(packages))
        else:
            image = image.env(draw(st.dictionaries(names, values, min_size=1, max_size=2)))
    return image


def post_lines(image: Image) -> list[str]:
    text = image.definition().split("%post\n", 1)[1].split("\n%environment\n", 1)[0]
    return [line.removeprefix("    ") for line in text.splitlines() if line]


@given(packages)
def test_each_package_is_one_quoted_shell_word(pkgs: list[str]) -> None:
    (line,) = post_lines(Image.from_registry("python:3.12-slim").pip_install(*pkgs))
    assert shlex.split(line) == [
        "PIP_BREAK_SYSTEM_PACKAGES=1",
        "python3",
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        *pkgs,
    ]


@given(st.dictionaries(names, values, min_size=1, max_size=3))
def test_env_is_exported_in_post_and_environment_with_each_value_one_word(
    variables: dict[str, str],
) -> None:
    image = Image.from_registry("python:3.12-slim").env(variables)
    exports = [shlex.split(line) for line in post_lines(image)]
    assert exports == [["export", f"{k}={v}"] for k, v in variables.items()]
    environment = image.definition().split("%environment\n", 1)[1]
    assert [shlex.split(line) for line in environment.splitlines()] == exports


@given(chains(), chains())
def test_the_digest_names_the_definition(a: Image, b: Image) -> None:
    assert a.build_name.startswith("sdk-") and len(a.build_name) == 20
    assert (a.digest == b.digest) == (a.definition() == b.definition())
    # Rebuilt from scratch, the same chain renders the same text: nothing depends on the run.
    assert Image(a.base, a.steps).definition() == a.definition()


@given(chains())
def test_one_more_step_is_another_image(image: Image) -> None:
    assert image.run_commands("true").digest != image.digest


def test_a_chain_renders_one_apptainer_definition() -> None:
    image = (
        Image.from_registry("python:3.12-slim")
        .apt_install("curl", "git")
        .pip_install("numpy==2.1")
        .env({"MODE": "it's on"})
        .run_commands("echo done")
    )
    assert image.definition() == (
        "Bootstrap: docker\n"
        "From: python:3.12-slim\n"
        "\n%post\n"
        "    apt-get update\n"
        "    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl git\n"
        "    rm -rf /var/lib/apt/lists/*\n"
        "    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir numpy==2.1\n"
        "    export MODE='it'\"'\"'s on'\n"
        "    echo done\n"
        "\n%environment\n"
        "    export MODE='it'\"'\"'s on'\n"
    )
    local = Image.local("/shared/base.sif").run_commands("true").definition()
    assert local.startswith("Bootstrap: localimage\nFrom: /shared/base.sif\n")


def test_images_used_as_they_are_are_references() -> None:
    assert Image.from_registry("python:3.12-slim").reference() == "docker://python:3.12-slim"
    assert Image.local("/x/a.sif").reference() == "/x/a.sif"
    box = Container("alpha", image=Image.from_registry("python:3.12-slim"))
    assert box.settings["image"] == "docker://python:3.12-slim"
    # A chain is built in the project first: no image setting to create the project with.
    assert (
        "image" not in Container("alpha", image=Image.local("/x/a.sif").pip_install("a")).settings
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.local("relative.sif"),
        lambda: Image.from_registry("two words"),
        lambda: Image.from_registry("x").pip_install(),
        lambda: Image.from_registry("x").run_commands("a\nb"),
        lambda: Image.from_registry("x").env({"PATH": "/bin"}),
        lambda: Image.from_registry("x").env({"A": "line\nbreak"}),
    ],
)
def test_bad_chains_are_refused_before_any_request(make: Any) -> None:
    with pytest.raises(BadRequest):
        make()


class Builds:
    """A stand-in client for one existing project and its builds."""

    def __init__(self, builds: list[dict[str, Any]], image: str | None = None) -> None:
        self.builds = builds
        self.image = image
        self.requests: list[tuple[str, str, Any]] = []
        self.door = None
        self.door_error = "no exec door behind the stand-in"

    def request(self, method: str, path: str, body: Any = None) -> Any:
        self.requests.append((method, path, body))
        if path == "/v1/projects/alpha":
            settings = {"image": self.image} if self.image else {}
            return {"name": "alpha", "settings": settings, "container": {"state": "stopped"}}
        if path == "/v1/projects/alpha/image-builds" and method == "GET":
            return {"project": "alpha", "images": self.builds}
        if path.startswith("/v1/projects/alpha/image-drafts/") and method == "GET":
            raise ApiError(404, "not_found", "no draft named that in this project")
        if path.startswith("/v1/projects/alpha/image-builds/"):
            return {**self.builds[-1], "state": "failed", "reason": "%post failed at line 3"}
        return {}

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)


CHAIN = Image.from_registry("python:3.12-slim").pip_install("numpy")


def changes(client: Builds) -> list[tuple[str, str, Any]]:
    return [(m, p, b) for m, p, b in client.requests if m != "GET"]


def test_an_unchanged_chain_uses_its_succeeded_build_and_is_not_built_again() -> None:
    name = CHAIN.build_name
    fake = Builds(
        [
            {"id": 3, "name": name, "state": "failed", "image": None},
            {"id": 4, "name": name, "state": "succeeded", "image": "/b/4/image.sif"},
            {"id": 5, "name": "other", "state": "succeeded", "image": "/b/5/image.sif"},
        ]
    )
    box = Container("alpha", image=CHAIN)
    box._client = fake  # type: ignore[assignment]
    with pytest.raises(RxError, match="stand-in"):
        box.run(timeout=5)
    assert changes(fake) == [
        ("PUT", "/v1/projects/alpha/image", {"image": "build:4"}),
        ("POST", "/v1/projects/alpha/start", None),
    ]
    # Already the project's image: not even set again.
    fake = Builds(fake.builds, image="/b/4/image.sif")
    box._client = fake  # type: ignore[assignment]
    with pytest.raises(RxError, match="stand-in"):
        box.run(timeout=5)
    assert changes(fake) == [("POST", "/v1/projects/alpha/start", None)]


def test_a_new_chain_is_drafted_and_built_and_a_failed_build_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("rxslurm.sdk.builds.BUILD_POLL_S", 0)
    fake = Builds([])
    original = fake.request

    def request(method: str, path: str, body: Any = None) -> Any:
        if method == "POST" and path == "/v1/projects/alpha/image-builds":
            fake.builds.append({"id": 9, "name": CHAIN.build_name, "state": "queued"})
            fake.requests.append((method, path, body))
            return fake.builds[-1]
        return original(method, path, body)

    fake.request = request  # type: ignore[method-assign]
    box = Container("alpha", image=CHAIN)
    box._client = fake  # type: ignore[assignment]
    with pytest.raises(BuildFailed, match="%post failed at line 3"):
        box.run(timeout=60)
    assert changes(fake) == [
        (
            "POST",
            "/v1/projects/alpha/image-drafts",
            {
                "name": CHAIN.build_name,
                "kind": "definition",
                "text": CHAIN.definition(),
                "context": ".",
            },
        ),
        (
            "POST",
            "/v1/projects/alpha/image-builds",
            {"draft": CHAIN.build_name, "name": CHAIN.build_name},
        ),
    ]


def test_an_edited_draft_of_the_chain_gets_the_chains_text_back() -> None:
    fake = Builds([])
    original = fake.request

    def request(method: str, path: str, body: Any = None) -> Any:
        if method == "GET" and path == f"/v1/projects/alpha/image-drafts/{CHAIN.build_name}":
            fake.requests.append((method, path, body))
            return {"name": CHAIN.build_name, "kind": "definition", "text": "edited\n"}
        if method == "POST" and path == "/v1/projects/alpha/image-builds":
            fake.requests.append((method, path, body))
            return {"id": 2, "name": CHAIN.build_name, "state": "cancelled", "reason": "by hand"}
        return original(method, path, body)

    fake.request = request  # type: ignore[method-assign]
    box = Container("alpha", image=CHAIN)
    box._client = fake  # type: ignore[assignment]
    with pytest.raises(BuildFailed, match="cancelled: by hand"):
        box.run(timeout=60)
    draft = f"/v1/projects/alpha/image-drafts/{CHAIN.build_name}"
    assert changes(fake)[0] == (
        "PATCH",
        draft,
        {"kind": "definition", "text": CHAIN.definition(), "context": "."},
    )


# -- local files ---------------------------------------------------------------------------


def test_an_added_file_and_folder_are_staged_and_copied_in_chain_order(tmp_path: Path) -> None:
    wheel = tmp_path / "tiny-0.1-py3-none-any.whl"
    wheel.write_bytes(b"a wheel")
    (tmp_path / "app" / "sub").mkdir(parents=True)
    (tmp_path / "app" / "sub" / "x.py").write_text("x = 1\n")
    image = (
        Image.local("/x/a.sif")
        .add_local_file(wheel, "/opt/wheels/")
        .pip_install("--no-index", "/opt/wheels/tiny-0.1-py3-none-any.whl")
        .add_local_dir(tmp_path / "app", "/srv/my app")
    )
    first, folder = image.uploads
    assert first.key.startswith("f-") and folder.key.startswith("d-")
    files = image.definition().split("%files\n", 1)[1].split("\n%post\n", 1)[0]
    assert files.splitlines() == [
        f"    {first.key} /.rx-context/{first.key}",
        f"    {folder.key} /.rx-context/{folder.key}",
    ]
    assert [shlex.split(line) for line in post_lines(image)] == [
        ["mkdir", "-p", "/opt/wheels", "&&", "cp", "-a",
         f"/.rx-context/{first.key}/tiny-0.1-py3-none-any.whl",
         "/opt/wheels/tiny-0.1-py3-none-any.whl"],
        ["PIP_BREAK_SYSTEM_PACKAGES=1", "python3", "-m", "pip", "install", "--no-cache-dir",
         "--no-index", "/opt/wheels/tiny-0.1-py3-none-any.whl"],
        ["mkdir", "-p", "/srv/my app", "&&", "cp", "-a", f"/.rx-context/{folder.key}/.",
         "/srv/my app"],
        ["rm", "-rf", "/.rx-context"],
    ]  # fmt: skip
    assert [e.path for e in folder.entries] == [f"{folder.key}/sub/x.py"]


def test_the_image_digest_follows_the_added_files_contents(tmp_path: Path) -> None:
    local = tmp_path / "data.txt"
    (tmp_path / "d").mkdir()
    inner = tmp_path / "d" / "f"

    def chain() -> Image:
        local_image = Image.local("/x/a.sif").add_local_file(local, "/opt/data.txt")
        return local_image.add_local_dir(tmp_path / "d", "/opt/d")

    local.write_text("one")
    inner.write_text("a")
    before = chain()
    assert chain().build_name == before.build_name  # unchanged: the same build
    local.write_text("two")
    changed = chain()
    assert changed.build_name != before.build_name  # a changed file: another build
    local.write_text("one")
    assert chain().build_name == before.build_name
    inner.write_text("b")
    assert chain().build_name != before.build_name
    inner.write_text("a")
    inner.chmod(0o755)  # the executable bit counts too
    assert chain().build_name != before.build_name


@pytest.mark.parametrize(
    "make",
    [
        lambda p: Image.local("/x/a.sif").add_local_file(p / "missing", "/opt/x"),
        lambda p: Image.local("/x/a.sif").add_local_file(p, "/opt/x"),
        lambda p: Image.local("/x/a.sif").add_local_file(p / "f", "relative"),
        lambda p: Image.local("/x/a.sif").add_local_file(p / "f", "/opt/../etc"),
        lambda p: Image.local("/x/a.sif").add_local_file(p / "f", "/opt/a\nb"),
        lambda p: Image.local("/x/a.sif").add_local_dir(p / "f", "/opt/x"),
    ],
)
def test_bad_local_files_are_refused_when_added(make: Any, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadRequest):
        make(tmp_path)


def test_a_new_chain_with_files_uploads_them_in_chunks_then_removes_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("rxslurm.sdk.builds.BUILD_POLL_S", 0)
    monkeypatch.setattr("rxslurm.protocol.build_context.CHUNK_BYTES", 4)
    local = tmp_path / "blob"
    local.write_bytes(b"0123456789")
    image = CHAIN.add_local_file(local, "/opt/blob")
    fake = Builds([])
    original = fake.request

    def request(method: str, path: str, body: Any = None) -> Any:
        if method == "POST" and path == "/v1/projects/alpha/image-builds":
            fake.requests.append((method, path, body))
            return {"id": 2, "name": image.build_name, "state": "succeeded", "image": "/b.sif"}
        return original(method, path, body)

    fake.request = request  # type: ignore[method-assign]
    box = Container("alpha", image=image)
    box._client = fake  # type: ignore[assignment]
    with pytest.raises(RxError, match="stand-in"):
        box.run(timeout=60)
    context = f"/v1/projects/alpha/image-contexts/{image.build_name}"
    entry = image.uploads[0].entries[0]
    sent = [(m, b) for m, p, b in fake.requests if p == context]
    assert sent == [
        ("PUT", {"path": entry.path, "offset": 0, "data": "MDEyMw==", "last": False,
                 "executable": False}),
        ("PUT", {"path": entry.path, "offset": 4, "data": "NDU2Nw==", "last": False,
                 "executable": False}),
        ("PUT", {"path": entry.path, "offset": 8, "data": "ODk=", "last": True,
                 "executable": False}),
        ("DELETE", None),
    ]  # fmt: skip
    draft = next(b for m, p, b in fake.requests if p.endswith("/image-drafts"))
    assert draft["context"] == f".rx-build-contexts/{image.build_name}"


def test_a_file_changed_after_it_was_added_is_not_uploaded(tmp_path: Path) -> None:
    local = tmp_path / "blob"
    local.write_bytes(b"before")
    image = CHAIN.add_local_file(local, "/opt/blob")
    local.write_bytes(b"after!")
    box = Container("alpha", image=image)
    fake = Builds([])
    box._client = fake  # type: ignore[assignment]
    with pytest.raises(BadRequest, match="changed since it was added"):
        box.run(timeout=60)
    assert not any(p.endswith("/image-drafts") for _, p, _ in fake.requests)
