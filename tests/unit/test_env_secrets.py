"""A project's variables and secrets without a cluster: the name and size rules (Hypothesis),
the secret store on disk, who may set and see what, the audit's names-only events, and what an
exec target and a batch plan carry."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxslurm.daemon.config import parse_config
from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.errors import BadRequest, Forbidden, NotFound
from rxslurm.daemon.exec.server import ExecRequest, child_env
from rxslurm.daemon.projects import environment
from rxslurm.daemon.projects.secret_store import (
    Secret,
    SecretStore,
    SecretStoreError,
)
from rxslurm.daemon.runtime.apptainer import holder_env
from rxslurm.daemon.settings import Settings
from rxslurm.protocol import batch_plan as protocol_plan
from rxslurm.protocol import env_vars
from rxslurm.slurm.script import render_batch_script, template_params
from tests.unit.test_batch_plan import member
from tests.unit.test_reconciler_edges import OWNER, World, world

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,40}", fullmatch=True).filter(
    lambda n: env_vars.refusal(n) is None
)
VALUES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


# -- names and values ------------------------------------------------------------------------


@given(NAMES, VALUES)
def test_every_posix_name_and_text_value_round_trips_through_key_equals_value(
    name: str, value: str
) -> None:
    assert env_vars.parse_assignment(f"{name}={value}") == (name, value)


@given(st.text(max_size=30))
def test_a_name_is_accepted_only_when_posix_and_not_reserved(name: str) -> None:
    posix = bool(env_vars.NAME_PATTERN.match(name))
    try:
        env_vars.check_name(name)
    except env_vars.BadVariable as exc:
        assert not posix or env_vars.refusal(name) is not None
        assert "\n" not in str(exc)
    else:
        assert posix and env_vars.refusal(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("APPTAINER_BIND", "Apptainer"),
        ("APPTAINERENV_X", "Apptainer"),
        ("apptainer_bind", "Apptainer"),
        ("SINGULARITYENV_X", "Apptainer"),
        ("SLURM_JOB_ID", "Slurm"),
        ("RXSLURM_SERVER", "rx-slurm"),
        ("LD_PRELOAD", "dynamic loader"),
        ("LD_LIBRARY_PATH", "dynamic loader"),
        ("PATH", "image"),
        ("HOME", "identity"),
        ("BASH_ENV", "shell"),
    ],
)
def test_a_reserved_name_is_refused_saying_whose_it_is(name: str, why: str) -> None:
    with pytest.raises(env_vars.BadVariable, match=f"reserved: .*{why}"):
        env_vars.check_name(name)


@given(st.text(min_size=1, max_size=8))
def test_a_refused_value_is_never_quoted_in_the_message(secret: str) -> None:
    value = secret + "\x00" + "x" * env_vars.MAX_VALUE
    with pytest.raises(env_vars.BadVariable) as caught:
        env_vars.check_value("TOKEN", value, "secret")
    assert value not in str(caught.value)


def test_reserved_names_are_exact_and_reserved_prefixes_any_case() -> None:
    assert env_vars.check_name("home") == "home"
    assert env_vars.check_name("Path") == "Path"
    with pytest.raises(env_vars.BadVariable, match="reserved"):
        env_vars.check_name("ld_preload")


def test_sizes_and_counts_are_capped() -> None:
    env_vars.check_value("A", "x" * env_vars.MAX_VALUE)
    with pytest.raises(env_vars.BadVariable, match="longer than"):
        env_vars.check_value("A", "é" * (env_vars.MAX_VALUE // 2 + 1))
    with pytest.raises(env_vars.BadVariable, match="at most"):
        env_vars.check_total({f"V{i}": "" for i in range(env_vars.MAX_COUNT + 1)})
    with pytest.raises(env_vars.BadVariable, match="more than"):
        env_vars.check_total({f"V{i}": "x" * env_vars.MAX_VALUE for i in range(9)})
    with pytest.raises(env_vars.BadVariable, match="not KEY=VALUE"):
        env_vars.parse_assignment("NOVALUE")


def holder_loop() -> str:
    """The holder script's own lines that export the project's variables from `$env`."""
    params = {name: "x" for name in template_params("holder.sh")}
    lines = render_batch_script("holder.sh", **params).splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("while IFS= read"))
    return "\n".join(lines[first : first + 3])


# One bash per example: no deadline (a busy machine starts processes slowly), fewer examples.
@settings(max_examples=40, deadline=None)
@given(st.dictionaries(NAMES, VALUES, max_size=5))
def test_the_holder_exports_exactly_the_variables_its_word_holds(
    variables: dict[str, str],
) -> None:
    word = holder_env(sorted(variables.items()))
    script = f'env="$1"\n{holder_loop()}\nenv -0'
    out = subprocess.run(
        ["bash", "-c", script, "holder", word], capture_output=True, check=True, env={}
    ).stdout
    exported = [e for e in out.decode().split("\0") if e.startswith("APPTAINERENV_")]
    got = dict(e.split("=", 1) for e in exported)
    assert got == {f"APPTAINERENV_{k}": v for k, v in variables.items()}


# -- the store ---------------------------------------------------------------------------------


def secret(name: str, value: str) -> Secret:
    return Secret(name, value, "ada", "2026-12-01T00:00:00Z")


def test_the_store_keeps_values_in_a_0600_file_of_a_0700_folder(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    assert store.read(7, "t0") == {}

    store.update(7, "t0", {"TOKEN": secret("TOKEN", "v1\nline"), "OTHER": secret("OTHER", "")})

    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    [file] = (tmp_path / "secrets").iterdir()
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert {n: s.value for n, s in store.read(7, "t0").items()} == {
        "TOKEN": "v1\nline",
        "OTHER": "",
    }
    store.update(7, "t0", {"TOKEN": None, "OTHER": None})
    assert list((tmp_path / "secrets").iterdir()) == []  # no file, no temporary left


def test_another_project_of_a_reused_id_does_not_inherit_the_secrets(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    store.update(7, "t0", {"TOKEN": secret("TOKEN", "old")})
    assert store.read(7, "t1") == {}
    store.update(7, "t1", {"NEW": secret("NEW", "n")})
    assert set(store.read(7, "t1")) == {"NEW"}


def test_forgetting_removes_only_that_projects_file(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    store.update(7, "t0", {"TOKEN": secret("TOKEN", "v")})
    assert not store.forget(7, "t-other")  # a later project of the same id: not its file
    assert set(store.read(7, "t0")) == {"TOKEN"}
    assert store.forget(7, "t0")
    assert list((tmp_path / "secrets").iterdir()) == []


def test_a_store_others_may_read_or_a_link_is_refused(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    store.update(1, "t", {"A": secret("A", "a")})
    (tmp_path / "secrets").chmod(0o755)
    with pytest.raises(SecretStoreError, match="read by others"):
        store.read(1, "t")
    (tmp_path / "secrets").chmod(0o700)
    file = tmp_path / "secrets" / "project-1.json"
    file.chmod(0o644)
    with pytest.raises(SecretStoreError, match="read by others"):
        store.read(1, "t")
    file.unlink()
    os.symlink(tmp_path / "elsewhere.json", file)
    with pytest.raises(OSError):
        store.read(1, "t")


@settings(deadline=None)  # fsyncs
@given(st.dictionaries(NAMES, VALUES, min_size=1, max_size=4))
def test_any_values_round_trip_through_the_file(variables: dict[str, str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        store = SecretStore(Path(folder) / "secrets")
        store.update(3, "t", {k: secret(k, v) for k, v in variables.items()})
        assert {k: s.value for k, s in store.read(3, "t").items()} == variables


# -- the service -------------------------------------------------------------------------------


def alpha(tmp_path: Path) -> tuple[World, object]:
    w = world(tmp_path, ("alpha", "running"))
    config = parse_config({"daemon": {"ledger": str(tmp_path / "ledger.db")}})
    w.service = ContainerService(w.ledger, config, w.slurm, w.runtime, clock=w.clock)
    return w, config


def test_owner_sets_variables_and_secrets_and_the_exec_step_gets_them_in_its_environment(
    tmp_path: Path,
) -> None:
    w, config = alpha(tmp_path)
    environment.set_env(w.ledger, OWNER, "alpha", {"PLAIN": "p", "SHARED": "from-env"})
    environment.set_secret(w.ledger, config, OWNER, "alpha", "TOKEN", "s3cret")
    environment.set_secret(w.ledger, config, OWNER, "alpha", "SHARED", "from-secret")
    w.add_job("alpha", "RUNNING")
    w.set("alpha", instance="rx-alpha-1", state_dir=str(tmp_path), node="n1")
    access = w.service.authorize_exec(OWNER, "alpha")
    target = w.service.target_of(access)
    assert target is not None and target.has_secrets
    assert "s3cret" not in repr(target)

    request = ExecRequest.parse({"project": "alpha", "argv": ["env"], "env": {"PLAIN": "mine"}})
    env = child_env(w.runtime, target, request)

    assert {k: v for k, v in env.items() if k.startswith("APPTAINERENV_")} == {
        "APPTAINERENV_PLAIN": "mine",
        "APPTAINERENV_SHARED": "from-secret",
        "APPTAINERENV_TOKEN": "s3cret",
    }


def test_the_audit_and_the_ledger_hold_names_never_secret_values(tmp_path: Path) -> None:
    w, config = alpha(tmp_path)
    environment.set_secret(w.ledger, config, OWNER, "alpha", "TOKEN", "s3cret-value")
    environment.remove_secret(w.ledger, config, OWNER, "alpha", "TOKEN")
    environment.set_secret(w.ledger, config, OWNER, "alpha", "TOKEN", "s3cret-value")
    events = [
        (r["action"], json.loads(r["detail"]))
        for r in w.ledger.db.query("SELECT action, detail FROM events WHERE action LIKE '%secret%'")
    ]
    assert events == [
        ("project.secret-set", {"name": "TOKEN"}),
        ("project.secret-removed", {"name": "TOKEN"}),
        ("project.secret-set", {"name": "TOKEN"}),
    ]
    w.ledger.close()
    for file in tmp_path.glob("ledger.db*"):
        assert b"s3cret-value" not in file.read_bytes()


def test_a_viewer_lists_names_but_sets_nothing_and_an_editor_cannot_set(tmp_path: Path) -> None:
    w, config = alpha(tmp_path)
    environment.set_secret(w.ledger, config, OWNER, "alpha", "TOKEN", "v")
    viewer = member(w, "vic", 3001, "viewer")
    editor = member(w, "eve", 3002, "editor")
    stranger = member(w, "sam", 3003, None)

    listed = environment.list_secrets(w.ledger, config, viewer, "alpha")
    assert [s["name"] for s in listed["secrets"]] == ["TOKEN"]
    assert "value" not in listed["secrets"][0]
    for actor in (viewer, editor):
        with pytest.raises(Forbidden, match="edit-env"):
            environment.set_secret(w.ledger, config, actor, "alpha", "X", "v")
        with pytest.raises(Forbidden):
            environment.set_env(w.ledger, actor, "alpha", {"X": "v"})
    with pytest.raises(NotFound):
        environment.list_env(w.ledger, stranger, "alpha")


def test_bad_input_changes_nothing(tmp_path: Path) -> None:
    w, config = alpha(tmp_path)
    environment.set_env(w.ledger, OWNER, "alpha", {"KEEP": "1"})
    with pytest.raises(BadRequest, match="reserved"):
        environment.set_env(w.ledger, OWNER, "alpha", {"NEW": "1", "LD_PRELOAD": "x"})
    with pytest.raises(BadRequest, match="reserved"):
        environment.set_secret(w.ledger, config, OWNER, "alpha", "SLURM_X", "v")
    with pytest.raises(NotFound):
        environment.unset_env(w.ledger, OWNER, "alpha", ["KEEP", "MISSING"])
    with pytest.raises(BadRequest):
        ExecRequest.parse({"project": "alpha", "argv": ["true"], "env": {"LD_PRELOAD": "x"}})
    names = [v["name"] for v in environment.list_env(w.ledger, OWNER, "alpha")["variables"]]
    assert names == ["KEEP"]
    assert environment.list_secrets(w.ledger, config, OWNER, "alpha")["secrets"] == []


def test_the_holder_and_the_batch_plan_get_the_variables_never_the_secrets(
    tmp_path: Path,
) -> None:
    w, config = alpha(tmp_path)
    environment.set_env(w.ledger, OWNER, "alpha", {"PLAIN": "p"})
    environment.set_secret(w.ledger, config, OWNER, "alpha", "TOKEN", "s3cret")
    project = w.ledger.db.table("projects").get(w.row("alpha")["project_id"])

    w.service.holder_job(w.row("alpha"), dict(project), Settings.from_row(project))
    plan = w.service.batch_plan(OWNER, "alpha").to_dict()

    assert w.runtime.holders[-1].env == (("PLAIN", "p"),)
    assert plan["env"] == {"PLAIN": "p"}
    parsed = protocol_plan.parse(json.loads(json.dumps(plan)))
    step = protocol_plan.step_env(parsed, {"HOME": "/home/m", "APPTAINERENV_PLAIN": "caller"})
    assert step == {"HOME": "/home/m", "APPTAINERENV_PLAIN": "p"}
