"""Image references as people write them (rxslurm.protocol.image_ref): every reference turns
back into what was written, a bare name is docker://, one image has one key however it is
written, and anything else is refused with a reason, never misread."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rxslurm.protocol.image_ref import (
    BadReference,
    ImageRef,
    normalize_image,
    parse_reference,
)

COMPONENT = st.from_regex(r"[a-z0-9]{1,8}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,8}){0,2}", fullmatch=True)
PATHS = st.lists(COMPONENT, min_size=1, max_size=3).map("/".join)
TAGS = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
DIGESTS = st.from_regex(r"[0-9a-f]{64}", fullmatch=True).map(lambda h: f"sha256:{h}")
HOSTS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]\.[a-z]{2,5}", fullmatch=True),
    st.just("localhost"),
    st.from_regex(r"127\.0\.0\.[0-9]{1,3}", fullmatch=True),
)
PORTS = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
REGISTRIES = st.one_of(st.just(""), st.builds(lambda h, p: h + p, HOSTS, PORTS))
OPTIONAL_TAGS = st.one_of(st.just(""), TAGS)
OPTIONAL_DIGESTS = st.one_of(st.just(""), DIGESTS)


def written(registry: str, path: str, tag: str, digest: str) -> str:
    first = path.split("/")[0]
    # Without a registry, a first part that looks like a host is read as one (Docker's rule).
    assume(registry or "/" not in path or not ("." in first or first == "localhost"))
    return (
        (f"{registry}/" if registry else "")
        + path
        + (f":{tag}" if tag else "")
        + (f"@{digest}" if digest else "")
    )


@given(REGISTRIES, PATHS, OPTIONAL_TAGS, OPTIONAL_DIGESTS)
def test_a_written_reference_is_read_into_its_parts_and_back(
    registry: str, path: str, tag: str, digest: str
) -> None:
    text = written(registry, path, tag, digest)
    # A bare registry-less first part that looks like a host would be read as one.
    ref = parse_reference(f"docker://{text}")
    assert ref == ImageRef("docker", registry, path, tag, digest)
    assert str(ref) == f"docker://{text}"
    assert parse_reference(str(ref)) == ref


@given(REGISTRIES, PATHS, OPTIONAL_TAGS, OPTIONAL_DIGESTS)
def test_a_bare_name_means_docker(registry: str, path: str, tag: str, digest: str) -> None:
    text = written(registry, path, tag, digest)
    assert parse_reference(text) == parse_reference(f"docker://{text}")
    assert normalize_image(text) == f"docker://{text}"


@given(COMPONENT, OPTIONAL_TAGS)
def test_one_docker_hub_image_has_one_key_however_it_is_written(name: str, tag: str) -> None:
    suffix = f":{tag}" if tag else ""
    spellings = [
        f"{name}{suffix}",
        f"library/{name}{suffix}",
        f"docker.io/library/{name}{suffix}",
        f"docker://index.docker.io/library/{name}{suffix}",
    ]
    keys = {parse_reference(s).key for s in spellings}
    assert keys == {f"docker://docker.io/library/{name}:{tag or 'latest'}"}


@given(REGISTRIES, PATHS, OPTIONAL_TAGS, DIGESTS)
def test_a_pinned_reference_names_the_digest_only(
    registry: str, path: str, tag: str, digest: str
) -> None:
    ref = parse_reference(written(registry, path, tag, ""))
    pinned = ref.pinned(digest)
    assert pinned.digest == digest and pinned.tag == ""
    assert parse_reference(str(pinned)) == pinned
    assert str(pinned).endswith(f"{ref.full_repository}@{digest}")
    # Pinning to the digest a reference already names keeps its key.
    assert parse_reference(f"{written(registry, path, '', digest)}").key == pinned.key


@given(st.text(st.characters(exclude_categories=()), max_size=80))
def test_any_text_is_a_reference_that_reads_back_the_same_or_is_refused(text: str) -> None:
    try:
        ref = parse_reference(text)
    except BadReference as exc:
        assert str(exc)
        return
    shown = str(ref)
    assert shown.startswith(("docker://", "oras://", "library://"))
    assert not any(ch.isspace() or not ch.isprintable() for ch in shown)
    assert parse_reference(shown) == ref
    assert parse_reference(ref.key).key == ref.key


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Python:3.12", "lowercase"),
        ("python:3.12 slim", "without spaces"),
        ("python:-x", "a tag is"),
        ("python@sha256:abc", "64 hex digits"),
        ("python@md5", "algorithm:hex"),
        ("https://python:3", "only docker://"),
        ("docker://", "names no image"),
        ("ex_ample.com:5000/x/y:1", "registry host"),
        ("a//b", "lowercase"),
        ("x" * 300, "at most 255"),
        ("", "non-empty"),
    ],
)
def test_what_is_not_a_reference_is_refused_with_its_reason(text: str, words: str) -> None:
    with pytest.raises(BadReference, match=words):
        parse_reference(text)


@pytest.mark.parametrize(
    ("text", "shown", "key"),
    [
        (
            "python:3.12-slim",
            "docker://python:3.12-slim",
            "docker://docker.io/library/python:3.12-slim",
        ),
        (
            "127.0.0.1:5055/rxslurm/busybox:1",
            "docker://127.0.0.1:5055/rxslurm/busybox:1",
            "docker://127.0.0.1:5055/rxslurm/busybox:1",
        ),
        (
            "localhost:5000/tool",
            "docker://localhost:5000/tool",
            "docker://localhost:5000/tool:latest",
        ),
        (
            "ghcr.io/org/app:1@sha256:" + "a" * 64,
            "docker://ghcr.io/org/app:1@sha256:" + "a" * 64,
            "docker://ghcr.io/org/app@sha256:" + "a" * 64,
        ),
        ("library://alpine:3.11", "library://alpine:3.11", "library://alpine:3.11"),
    ],
)
def test_references_people_write(text: str, shown: str, key: str) -> None:
    ref = parse_reference(text)
    assert (str(ref), ref.key) == (shown, key)


@pytest.mark.parametrize("text", ["images/tool.sif", "./tool", "../x/y"])
def test_a_relative_path_is_not_taken_for_a_reference(text: str) -> None:
    with pytest.raises(BadReference, match="looks like a relative file path"):
        normalize_image(text)


def test_a_path_is_kept_as_written() -> None:
    assert normalize_image("/images/My Image.sif") == "/images/My Image.sif"
    assert normalize_image("") == ""
