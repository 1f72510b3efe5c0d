"""The request binding in a MUNGE payload, the door's refusal limiter, and rxctl's door choice.

Fast unit tests: no root, no Slurm, no munged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rxslurm.cli.door import DEFAULT_SOCKET, Door, DoorError, find_door
from rxslurm.daemon.api.munge_door import RefusalLimiter
from rxslurm.slurm import request_binding
from rxslurm.slurm.request_binding import Binding, BindingError

methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "get"])
targets = st.text(min_size=1, max_size=200).map(lambda t: "/" + t)
bodies = st.binary(max_size=2000)
uids = st.integers(min_value=0, max_value=request_binding.MAX_UID)


@given(methods, targets, bodies, uids)
def test_a_binding_survives_its_payload_and_matches_its_request(method, target, body, uid) -> None:
    binding = request_binding.bind(method, target, body, uid)
    payload = binding.to_payload()
    assert len(payload) <= request_binding.MAX_PAYLOAD
    parsed = request_binding.parse(payload)
    assert parsed == binding
    request_binding.check(parsed, method, target, body)


@given(methods, targets, bodies, uids, st.text("0123456789abcdef", min_size=32, max_size=32))
def test_the_digest_is_sha256_over_the_documented_parts(method, target, body, uid, nonce) -> None:
    """Whichever SHA-256 computes it (the module's is the interpreter's built-in one, rxd's
    other clients may use OpenSSL's), the digest is the one the format defines."""
    expected = hashlib.sha256()
    body_digest = hashlib.sha256(body).digest()
    for part in (
        b"rxslurm-request/1",
        str(uid).encode(),
        nonce.encode(),
        method.encode(),
        target.encode("utf-8", errors="surrogateescape"),
        body_digest,
    ):
        expected.update(len(part).to_bytes(8, "big") + part)
    digest = request_binding.request_digest(uid, nonce, method, target, body)
    assert digest == expected.hexdigest()


@given(st.binary(max_size=400))
def test_random_bytes_are_refused_never_crash(payload: bytes) -> None:
    try:
        binding = request_binding.parse(payload)
    except BindingError as exc:
        assert str(exc).startswith("the credential's payload")
    else:
        assert binding.to_payload() == payload  # only a well-formed payload parses


@given(st.text(max_size=200))
def test_random_text_is_refused_never_crash(text: str) -> None:
    with pytest.raises(BindingError):
        request_binding.parse(text.encode("utf-8", errors="surrogateescape"))


@given(methods, targets, bodies, uids, st.data())
def test_any_change_to_the_request_is_refused(method, target, body, uid, data) -> None:
    binding = request_binding.bind(method, target, body, uid)
    what = data.draw(st.sampled_from(["method", "target", "body"]))
    changed = {"method": method, "target": target, "body": body}
    if what == "method":
        changed["method"] = data.draw(methods.filter(lambda m: m != method))
    elif what == "target":
        changed["target"] = data.draw(targets.filter(lambda t: t != target))
    else:
        changed["body"] = data.draw(bodies.filter(lambda b: b != body))
    with pytest.raises(BindingError, match="does not match its credential"):
        request_binding.check(binding, changed["method"], changed["target"], changed["body"])


@given(methods, targets, bodies, uids, uids)
def test_a_binding_with_another_uid_or_nonce_does_not_match(method, target, body, uid, other):
    assume(uid != other)
    binding = request_binding.bind(method, target, body, uid)
    with pytest.raises(BindingError):
        request_binding.check(Binding(other, binding.nonce, binding.digest), method, target, body)
    fresh = request_binding.bind(method, target, body, uid)
    assert fresh.nonce != binding.nonce and fresh.digest != binding.digest
    with pytest.raises(BindingError):
        request_binding.check(Binding(uid, fresh.nonce, binding.digest), method, target, body)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"rxslurm-request/2 uid=1 nonce=" + b"0" * 32 + b" sha256=" + b"0" * 64,
        b"rxslurm-request/1 uid=01 nonce=" + b"0" * 32 + b" sha256=" + b"0" * 64,
        b"rxslurm-request/1 uid=4294967295 nonce=" + b"0" * 32 + b" sha256=" + b"0" * 64,
        b"rxslurm-request/1 uid=1 nonce=" + b"0" * 32 + b" sha256=" + b"0" * 64 + b"\n",
        b"rxslurm-request/1 uid=1 nonce=" + b"A" * 32 + b" sha256=" + b"0" * 64,
        b"POST /v1/x sha256:abc",
    ],
)
def test_near_misses_are_not_bindings(payload: bytes) -> None:
    with pytest.raises(BindingError):
        request_binding.parse(payload)


def test_out_of_range_uids_cannot_be_bound() -> None:
    for uid in (-1, 2**32 - 1):
        with pytest.raises(BindingError):
            request_binding.bind("GET", "/", b"", uid)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_refusals_are_audited_up_to_a_burst_per_address_then_counted() -> None:
    clock = Clock()
    limiter = RefusalLimiter(burst=3, window_s=60, clock=clock)
    assert [limiter.admit("10.0.0.1") for _ in range(5)] == [0, 0, 0, None, None]
    assert limiter.admit("10.0.0.2") == 0  # another address has its own allowance
    clock.now = 61
    assert limiter.admit("10.0.0.1") == 2  # the next audited row says how many were left out
    assert limiter.admit("10.0.0.1") == 0


def test_the_limiter_forgets_old_addresses_and_stays_bounded(monkeypatch) -> None:
    from rxslurm.daemon.api import munge_door

    monkeypatch.setattr(munge_door, "MAX_TRACKED_PEERS", 10)
    clock = Clock()
    limiter = RefusalLimiter(burst=1, window_s=60, clock=clock)
    for n in range(100):
        limiter.admit(f"10.0.{n}.1")
    assert len(limiter._peers) <= 10


def test_the_socket_flag_wins_then_the_socket_variable() -> None:
    env = {"RXSLURM_SERVER": "rxd:8766", "RXCTL_SOCKET": "/tmp/env.sock"}
    assert find_door("/tmp/flag.sock", env) == Door("socket", "/tmp/flag.sock", "--socket")
    assert find_door(None, env) == Door("socket", "/tmp/env.sock", "$RXCTL_SOCKET")


def test_the_server_variable_then_rxctl_toml_then_the_local_socket(tmp_path: Path) -> None:
    config = tmp_path / "rxctl.toml"
    env = {"RXCTL_CONFIG": str(config)}
    assert find_door(None, env) == Door("socket", DEFAULT_SOCKET, "default")
    config.write_text('server = "rxd.cluster:8766"\nmunge_socket = "/run/m.sock"\n')
    door = find_door(None, env)
    assert door == Door("network", "rxd.cluster:8766", str(config), "/run/m.sock")
    assert door.host_port == ("rxd.cluster", 8766)
    env["RXSLURM_SERVER"] = "[::1]:9000"
    door = find_door(None, env)
    assert (door.kind, door.source, door.host_port) == ("network", "$RXSLURM_SERVER", ("::1", 9000))
    assert "MUNGE" in door.describe()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('server = "rxd"\n', 'must be "host:port"'),
        ('server = "rxd:http"\n', 'must be "host:port"'),
        ('server = "rxd:70000"\n', 'must be "host:port"'),
        ('sever = "rxd:1"\n', "unknown key 'sever'; valid keys: server, munge_socket"),
        ("server = 8766\n", "server must be a string"),
        ("server = [\n", "is not valid TOML"),
    ],
)
def test_a_bad_rxctl_toml_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "rxctl.toml"
    config.write_text(text)
    with pytest.raises(DoorError, match=message.replace("[", r"\[")):
        find_door(None, {"RXCTL_CONFIG": str(config)})


def test_rxctl_reports_a_bad_server_address_as_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    rxctl = Path(sys.executable).parent / "rxctl"
    result = subprocess.run(
        [str(rxctl), "whoami"],
        env={"RXSLURM_SERVER": "no-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "Error: $RXSLURM_SERVER: rxd's server address must be \"host:port\", not 'no-port'\n"
    )


def test_rxctl_on_the_local_socket_does_not_load_ctypes() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom rxslurm.cli.main import cli\n"
        "try:\n    cli(['--socket', '/nonexistent.sock', 'whoami'])\nexcept SystemExit:\n    pass\n"
        "print('ctypes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False", out


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("8766", 'daemon.listen must be "host:port"'),
        ("rxd:http", 'daemon.listen must be "host:port"'),
    ],
)
def test_a_bad_listen_setting_is_refused(listen: str, message: str) -> None:
    from rxslurm.daemon.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config({"daemon": {"listen": listen}})


def test_the_network_door_is_off_by_default_and_apart_from_the_platform_listener() -> None:
    from rxslurm.daemon.config import ConfigError, parse_config

    assert parse_config({}).daemon.listen == ""
    assert parse_config({"daemon": {"listen": "0.0.0.0:8766"}}).daemon.listen == "0.0.0.0:8766"
    with pytest.raises(ConfigError, match="daemon.listen and platform.listen must differ"):
        parse_config({"daemon": {"listen": "h:1"}, "platform": {"listen": "h:1"}})


def test_refusals_from_many_addresses_are_audited_up_to_a_total() -> None:
    clock = Clock()
    limiter = RefusalLimiter(burst=3, total=5, window_s=60, clock=clock)
    admitted = [limiter.admit(f"10.0.0.{n}") for n in range(8)]
    assert admitted == [0, 0, 0, 0, 0, None, None, None]
    assert limiter.admit("10.0.0.1") is None  # within its own burst, but over the total
    clock.now = 61
    assert limiter.admit("10.0.0.1") == 1  # its suppressed refusal is counted in the next row


@given(methods, targets, bodies, uids, bodies)
def test_a_streamed_body_s_binding_is_the_held_body_s_and_matches_only_it(
    method, target, body, uid, other
) -> None:
    digest = hashlib.sha256(body).digest()
    streamed = request_binding.bind(method, target, b"", uid, "ab" * 16, body_sha256=digest)
    assert streamed == request_binding.bind(method, target, body, uid, "ab" * 16)
    request_binding.check_streamed(streamed, method, target, digest)
    assume(other != body)
    with pytest.raises(BindingError, match="does not match its credential"):
        request_binding.check_streamed(streamed, method, target, hashlib.sha256(other).digest())
