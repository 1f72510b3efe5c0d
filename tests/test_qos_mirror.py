"""Quotas mirrored into Slurm QOSes (rxslurm/daemon/quotas/qos_mirror.py, rxslurm/slurm/qos.py).

Unit tests run `sync()` against an in-memory stand-in for sacctmgr/scontrol that keeps QOSes,
associations and partition QOSes the way Slurm 22.05 does (lowercased names, -1 clears a limit,
"Nothing modified" exits 1, no deleting an association with jobs). The cluster tests use the real
commands on the shared test cluster, with unique names, and restore everything in `finally`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.quotas import leases as quotas
from rxslurm.daemon.quotas import qos_mirror
from rxslurm.slurm.adapter import SlurmCli
from rxslurm.slurm.qos import (
    QosLimits,
    check_name,
    parse_assoc_lines,
    parse_qos_lines,
    parse_tres,
)
from tests.support.cluster import wait_for

TAG = "rx"
CLUSTER = "rxcluster"
EMPTY_QOS = {"maxtrespu": "", "maxjobspu": "", "grptres": "", "grpjobs": ""}
# sacctmgr's setting names -> the stand-in's columns.
FIELDS = {
    "MaxTRESPerUser": "maxtrespu",
    "MaxJobsPerUser": "maxjobspu",
    "GrpTRES": "grptres",
    "GrpJobs": "grpjobs",
    "description": "description",
}

# -- a stand-in for Slurm's accounting commands --------------------------------------------------


class FakeAccounting:
    """sacctmgr and scontrol as far as qos_mirror uses them, on dicts."""

    def __init__(self) -> None:
        self.qos: dict[str, dict[str, str]] = {
            "normal": {**EMPTY_QOS, "description": "normal qos default"}
        }
        self.assocs: list[dict[str, Any]] = [
            self._assoc("rxcarol", "rxtest", ""),
            self._assoc("rxbob", "rxtest", ""),
            self._assoc("rxbob", "other", ""),
        ]
        self.partitions = {"cpu": "", "gpu": ""}
        self.busy: set[tuple[str, str, str]] = set()  # associations with jobs
        self.down = False
        self.changes: list[list[str]] = []

    @staticmethod
    def _assoc(user: str, account: str, partition: str) -> dict[str, Any]:
        return {
            "user": user,
            "account": account,
            "partition": partition,
            "qos": ["normal"],
            "default": "",
        }

    def assoc(self, user: str, account: str, partition: str) -> dict[str, Any] | None:
        for a in self.assocs:
            if (a["user"], a["account"], a["partition"]) == (user, account, partition):
                return a
        return None

    # The runner SlurmCli calls instead of runas.run.
    def __call__(self, argv: Sequence[str], **_: Any) -> subprocess.CompletedProcess[str]:
        prog, args = os.path.basename(argv[0]), list(argv[1:])
        if self.down:
            return self._done(argv, 1, err=f"{prog}: error: Problem talking to the database")
        if prog == "scontrol":
            return self._scontrol(argv, args)
        assert args[:1] in (["-i"], ["-P"]), args
        if args[0] == "-P":
            return self._show(argv, args[3:])
        self.changes.append(args[1:])
        verb, kind, rest = args[1], args[2], args[3:]
        return getattr(self, f"_{verb}_{kind}")(argv, rest)

    @staticmethod
    def _done(argv: Sequence[str], rc: int = 0, out: str = "", err: str = "") -> Any:
        return subprocess.CompletedProcess(list(argv), rc, out, err)

    @staticmethod
    def _pairs(items: Sequence[str]) -> dict[str, str]:
        return dict(i.split("=", 1) for i in items if "=" in i)

    def _scontrol(self, argv: Sequence[str], args: list[str]) -> Any:
        if args == ["show", "config"]:
            return self._done(argv, out=f"ClusterName             = {CLUSTER}\n")
        if args[:2] == ["show", "partition"]:
            lines = [
                f"PartitionName={p} AllowQos=ALL Default=NO QoS={q or 'N/A'} State=UP"
                for p, q in self.partitions.items()
            ]
            return self._done(argv, out="\n".join(lines) + "\n")
        if args[0] == "update":
            self.changes.append(args)
            pairs = self._pairs(args[1:])
            if pairs["QOS"] and pairs["QOS"] not in self.qos:
                return self._done(argv, 1, err="scontrol: error: Invalid qos")
            self.partitions[pairs["PartitionName"]] = pairs["QOS"]
            return self._done(argv)
        raise AssertionError(args)

    def _show(self, argv: Sequence[str], args: list[str]) -> Any:
        pairs = self._pairs(args)
        if args[0] == "qos":
            lines = [
                "|".join(
                    [
                        name,
                        q["maxtrespu"],
                        q["maxjobspu"],
                        q["grptres"],
                        q["grpjobs"],
                        q["description"],
                    ]
                )
                for name, q in self.qos.items()
            ]
            return self._done(argv, out="\n".join(lines) + "\n")
        assert args[0] == "assoc" and pairs["cluster"] == CLUSTER
        lines = [
            "|".join(
                [CLUSTER, a["account"], a["user"], a["partition"], ",".join(a["qos"]), a["default"]]
            )
            for a in self.assocs
            if pairs.get("users", a["user"]) == a["user"]
            and pairs.get("qos", "") in ("", *a["qos"])
        ]
        lines.append(f"{CLUSTER}|rxtest||||")  # the account's own association
        return self._done(argv, out="\n".join(lines) + "\n")

    def _add_qos(self, argv: Sequence[str], rest: list[str]) -> Any:
        name = rest[0].lower()
        if name in self.qos:
            return self._done(argv, 1, out=" Nothing new added.\n")
        description = self._pairs(rest).get("description", name).lower()
        self.qos[name] = {**EMPTY_QOS, "description": description}
        return self._done(argv)

    def _modify_qos(self, argv: Sequence[str], rest: list[str]) -> Any:
        where, settings = rest[1 : rest.index("set")], rest[rest.index("set") + 1 :]
        name = self._pairs(where)["name"]
        if name not in self.qos:
            return self._done(argv, 1, out=" Nothing modified\n")
        for key, value in self._pairs(settings).items():
            field = FIELDS[key]
            if field in ("maxtrespu", "grptres"):
                value = ",".join(i for i in value.split(",") if not i.endswith("=-1"))
            elif value == "-1":
                value = ""
            self.qos[name][field] = value.lower()
        return self._done(argv)

    def _delete_qos(self, argv: Sequence[str], rest: list[str]) -> Any:
        name = rest[0]
        if any(a["default"] == name for a in self.assocs):
            return self._done(argv, 1, out=" Error with request: default qos in use\n")
        if name not in self.qos:
            return self._done(argv, 1, out=" Nothing deleted\n")
        del self.qos[name]
        for a in self.assocs:
            a["qos"] = [q for q in a["qos"] if q != name]
        return self._done(argv)

    def _add_user(self, argv: Sequence[str], rest: list[str]) -> Any:
        pairs = self._pairs(rest[1:])
        if self.assoc(rest[0], pairs["account"], pairs["partition"]):
            return self._done(argv, 1, out=" Nothing new added.\n")
        self.assocs.append(self._assoc(rest[0], pairs["account"], pairs["partition"]))
        return self._done(argv)

    def _where_assoc(self, rest: list[str]) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
        end = rest.index("set") if "set" in rest else len(rest)
        pairs = self._pairs(rest[1:end])
        key = (pairs["name"], pairs["account"], pairs["partition"])
        return self.assoc(*key), key

    def _modify_user(self, argv: Sequence[str], rest: list[str]) -> Any:
        assoc, _ = self._where_assoc(rest)
        if assoc is None:
            return self._done(argv, 1, out=" Nothing modified\n")
        for item in rest[rest.index("set") + 1 :]:
            if item.startswith("qos+="):
                assoc["qos"] = sorted({*assoc["qos"], item[5:]})
            elif item.startswith("qos-="):
                assoc["qos"] = [q for q in assoc["qos"] if q != item[5:]]
            elif item.startswith("defaultqos="):
                assoc["default"] = "" if item == "defaultqos=-1" else item[11:]
        return self._done(argv)

    def _delete_user(self, argv: Sequence[str], rest: list[str]) -> Any:
        assoc, key = self._where_assoc(rest)
        if assoc is None:
            return self._done(argv, 1, out=" Nothing deleted\n")
        if key in self.busy:
            return self._done(argv, 1, out=" Error with request: Job(s) active, cancel job(s)\n")
        self.assocs.remove(assoc)
        return self._done(argv)


@pytest.fixture
def slurm_db(tmp_path: Path) -> FakeAccounting:
    return FakeAccounting()


@pytest.fixture
def slurm(tmp_path: Path, slurm_db: FakeAccounting) -> SlurmCli:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sacctmgr", "scontrol"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 99\n")
        (bin_dir / name).chmod(0o755)
    return SlurmCli(bin_dir=str(bin_dir), runner=slurm_db)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger.open(tmp_path / "state" / "ledger.db", migrate=True)
    yield ledger
    ledger.close()


def set_quota(ledger: Ledger, **body: Any) -> dict[str, Any]:
    body.setdefault("mirror_qos", True)
    with ledger.transaction() as db:
        return quotas.set_quota(db, quotas.parse_quota(body, {"cpu", "gpu"}), "root")


def drop_quota(ledger: Ledger, quota: dict[str, Any]) -> None:
    with ledger.transaction() as db:
        quotas.remove_quota(db, quota["id"])


# -- names, limits, parsing ----------------------------------------------------------------------


def test_qos_names() -> None:
    deployment = {"partition": "GPU", "scope": "deployment", "subject": ""}
    user = {"partition": "gpu", "scope": "user", "subject": "rxalice"}
    assert qos_mirror.qos_name("rx", deployment) == "rx-gpu"
    assert qos_mirror.qos_name("rx", user) == "rx-gpu-user-rxalice"


def test_user_quota_limits_are_per_user_and_deployment_ones_are_group_limits() -> None:
    quota = {"max_gpus": 2, "max_cpus": 0, "max_mem_mb": 4000, "max_containers": 3}
    user = qos_mirror.limits_for({**quota, "scope": "user"})
    assert user == QosLimits({"gres/gpu": 2, "mem": 4000}, 3, {}, 0)
    assert user.settings() == [
        "MaxTRESPerUser=gres/gpu=2,cpu=-1,mem=4000",
        "MaxJobsPerUser=3",
        "GrpTRES=gres/gpu=-1,cpu=-1,mem=-1",
        "GrpJobs=-1",
    ]
    group = qos_mirror.limits_for({**quota, "scope": "deployment"})
    assert group == QosLimits({}, 0, {"gres/gpu": 2, "mem": 4000}, 3)
    assert qos_mirror.shown(group) == {"GrpTRES": "gres/gpu=2,mem=4000", "GrpJobs": 3}


def test_parse_tres_reads_units() -> None:
    assert parse_tres("cpu=4,gres/gpu=2,mem=4G") == {"cpu": 4, "gres/gpu": 2, "mem": 4096}
    assert parse_tres("") == {}


def test_parse_qos_lines_keeps_pipes_in_the_description() -> None:
    text = "normal|||||Normal QOS\nrx-gpu|gres/gpu=2|3|cpu=8|5|rx-slurm mirror tag=rx|x\n"
    found = parse_qos_lines(text)
    assert found["rx-gpu"].description == "rx-slurm mirror tag=rx|x"
    assert found["rx-gpu"].limits == QosLimits({"gres/gpu": 2}, 3, {"cpu": 8}, 5)
    assert found["normal"].limits == QosLimits({}, 0, {}, 0)


def test_parse_assoc_lines() -> None:
    (assoc,) = parse_assoc_lines("rxcluster|rxtest|rxalice|gpu|normal,rx-gpu|rx-gpu\n")
    assert (assoc.user, assoc.partition, assoc.qos, assoc.default_qos) == (
        "rxalice",
        "gpu",
        ("normal", "rx-gpu"),
        "rx-gpu",
    )


@pytest.mark.parametrize("name", ["a,b", "a=b", "a b", "", "-x", "a\nb", "x" * 65])
def test_names_sacctmgr_could_misread_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_name("user", name)


def test_ownership_is_the_tag_in_the_description() -> None:
    qos = parse_qos_lines("rx-gpu|||||rx-slurm mirror tag=rx made=rxtest\n")["rx-gpu"]
    assert qos_mirror.owned(qos, "rx") and qos_mirror.owned(qos, "RX")
    assert not qos_mirror.owned(qos, "rx2")
    site = parse_qos_lines("rx-gpu|||||the site's own\n")["rx-gpu"]
    assert not qos_mirror.owned(site, "rx")


# -- sync against the stand-in -------------------------------------------------------------------


def test_user_quota_becomes_the_default_qos_of_the_users_partition_associations(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    quota = set_quota(
        ledger, partition="gpu", scope="user", subject="rxbob", max_gpus=2, max_containers=3
    )
    (entry,) = qos_mirror.sync(ledger, slurm, TAG)
    assert entry == {
        "quota_id": quota["id"],
        "partition": "gpu",
        "scope": "user",
        "subject": "rxbob",
        "qos": "rx-gpu-user-rxbob",
        "limits": {"MaxTRESPerUser": "gres/gpu=2", "MaxJobsPerUser": 3},
        "attached": "default QOS of rxbob's associations on partition gpu (accounts other, rxtest)",
        "users": ["rxbob"],
    }
    qos = slurm_db.qos["rx-gpu-user-rxbob"]
    assert (qos["maxtrespu"], qos["maxjobspu"]) == ("gres/gpu=2", "3")
    assert qos["description"] == "rx-slurm mirror tag=rx made=other+rxtest"
    for account in ("rxtest", "other"):
        assoc = slurm_db.assoc("rxbob", account, "gpu")
        assert assoc is not None and assoc["default"] == "rx-gpu-user-rxbob"
        assert assoc["qos"] == ["normal", "rx-gpu-user-rxbob"]
        # Jobs on other partitions keep the general association and its QOS.
        assert slurm_db.assoc("rxbob", account, "")["default"] == ""  # type: ignore[index]
    assert slurm_db.partitions == {"cpu": "", "gpu": ""}


def test_sync_twice_changes_nothing_more(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_gpus=2)
    set_quota(ledger, partition="gpu", max_gpus=4)
    first = qos_mirror.sync(ledger, slurm, TAG)
    before = [list(c) for c in slurm_db.changes]
    assert qos_mirror.sync(ledger, slurm, TAG) == first
    # Only the limits are written again; no association or partition is touched twice.
    again = slurm_db.changes[len(before) :]
    assert again and all(c[:2] == ["modify", "qos"] for c in again)


def test_changed_limits_are_written_and_cleared_ones_removed(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_gpus=2, max_cpus=8)
    qos_mirror.sync(ledger, slurm, TAG)
    set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_gpus=1)
    qos_mirror.sync(ledger, slurm, TAG)
    assert slurm_db.qos["rx-gpu-user-rxbob"]["maxtrespu"] == "gres/gpu=1"


def test_removing_the_quota_removes_the_qos_and_restores_the_associations(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    before = [dict(a) for a in slurm_db.assocs]
    quota = set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_gpus=2)
    qos_mirror.sync(ledger, slurm, TAG)
    drop_quota(ledger, quota)
    assert qos_mirror.sync(ledger, slurm, TAG) == [
        {"qos": "rx-gpu-user-rxbob", "removed": True, "users": ["rxbob"]}
    ]
    assert "rx-gpu-user-rxbob" not in slurm_db.qos
    assert slurm_db.assocs == before


def test_a_partition_association_the_site_made_is_kept_on_removal(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    slurm_db.assocs.append(slurm_db._assoc("rxcarol", "rxtest", "gpu"))
    quota = set_quota(ledger, partition="gpu", scope="user", subject="rxcarol", max_gpus=1)
    qos_mirror.sync(ledger, slurm, TAG)
    assert slurm_db.qos["rx-gpu-user-rxcarol"]["description"] == "rx-slurm mirror tag=rx"
    assert slurm_db.assoc("rxcarol", "rxtest", "gpu")["default"] == "rx-gpu-user-rxcarol"  # type: ignore[index]
    drop_quota(ledger, quota)
    qos_mirror.sync(ledger, slurm, TAG)
    assert slurm_db.assoc("rxcarol", "rxtest", "gpu") == slurm_db._assoc("rxcarol", "rxtest", "gpu")


def test_an_association_with_jobs_is_kept_and_said_so(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    quota = set_quota(ledger, partition="gpu", scope="user", subject="rxcarol", max_gpus=1)
    qos_mirror.sync(ledger, slurm, TAG)
    slurm_db.busy.add(("rxcarol", "rxtest", "gpu"))
    drop_quota(ledger, quota)
    (entry,) = qos_mirror.sync(ledger, slurm, TAG)
    assert entry["removed"] is True
    assert entry["kept_associations"] == ["rxcarol/rxtest/gpu"]
    assoc = slurm_db.assoc("rxcarol", "rxtest", "gpu")
    assert assoc is not None and (assoc["qos"], assoc["default"]) == (["normal"], "")
    assert "rx-gpu-user-rxcarol" not in slurm_db.qos


def test_deployment_quota_becomes_the_partition_qos(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    quota = set_quota(ledger, partition="gpu", max_gpus=4, max_containers=10)
    (entry,) = qos_mirror.sync(ledger, slurm, TAG)
    assert entry["limits"] == {"GrpTRES": "gres/gpu=4", "GrpJobs": 10}
    assert entry["attached"] == "partition gpu (QOS=rx-gpu)"
    assert slurm_db.partitions["gpu"] == "rx-gpu"
    assert slurm_db.qos["rx-gpu"]["grptres"] == "gres/gpu=4"
    drop_quota(ledger, quota)
    qos_mirror.sync(ledger, slurm, TAG)
    assert slurm_db.partitions["gpu"] == "" and "rx-gpu" not in slurm_db.qos


def test_a_partition_qos_the_site_set_is_not_replaced(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    slurm_db.qos["site"] = dict(slurm_db.qos["normal"], description="the site's")
    slurm_db.partitions["gpu"] = "site"
    set_quota(ledger, partition="gpu", max_gpus=4)
    (entry,) = qos_mirror.sync(ledger, slurm, TAG)
    assert entry["skipped"] == (
        "partition gpu already has QOS site, set by the site; rx-slurm does not replace it"
    )
    assert slurm_db.partitions["gpu"] == "site" and "rx-gpu" not in slurm_db.qos


def test_project_quotas_are_skipped_with_the_reason(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    set_quota(ledger, partition="gpu", scope="project", subject="alpha", max_gpus=4)
    (entry,) = qos_mirror.sync(ledger, slurm, TAG)
    assert entry["qos"] is None
    assert entry["skipped"].startswith("a project quota has no Slurm equivalent")
    assert slurm_db.changes == []


def test_quotas_without_mirror_are_not_mirrored(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    set_quota(ledger, partition="gpu", max_gpus=4, mirror_qos=False)
    assert qos_mirror.sync(ledger, slurm, TAG) == []
    assert slurm_db.changes == []


def test_a_user_slurm_does_not_know_is_skipped(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    set_quota(ledger, partition="gpu", scope="user", subject="nobody", max_gpus=1)
    (entry,) = qos_mirror.sync(ledger, slurm, TAG)
    assert entry["skipped"] == "Slurm has no association for user nobody on rxcluster"
    assert slurm_db.changes == []


def test_other_deployments_and_the_sites_qoses_are_left_alone(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    other = dict(slurm_db.qos["normal"], description="rx-slurm mirror tag=elsewhere")
    slurm_db.qos["elsewhere-gpu"] = other
    slurm_db.qos["rx-gpu"] = dict(slurm_db.qos["normal"], description="made by hand")
    set_quota(ledger, partition="gpu", max_gpus=4)
    (entry,) = qos_mirror.sync(ledger, slurm, TAG)
    assert entry["skipped"] == "QOS rx-gpu exists and is not this rx-slurm's; left alone"
    assert {"elsewhere-gpu", "rx-gpu"} <= set(slurm_db.qos)
    assert slurm_db.partitions["gpu"] == ""


def test_slurm_not_answering_is_reported_not_raised(
    ledger: Ledger, slurm: SlurmCli, slurm_db: FakeAccounting
) -> None:
    quota = set_quota(ledger, partition="gpu", max_gpus=4)
    slurm_db.down = True
    (entry,) = qos_mirror.sync(ledger, slurm, TAG)
    assert entry["quota_id"] == quota["id"]
    assert entry["error"].startswith("Slurm did not answer (Problem talking to the database)")
    slurm_db.down = False
    assert qos_mirror.sync(ledger, slurm, TAG)[0]["qos"] == "rx-gpu"


# -- the real cluster ----------------------------------------------------------------------------


def sh(*argv: str, user: str | None = None) -> str:
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    result = subprocess.run(full, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{argv}: {result.stdout} {result.stderr}"
    return result.stdout


def assocs_of(user: str) -> list[str]:
    return sorted(
        sh(
            "sacctmgr",
            "-P",
            "-n",
            "show",
            "assoc",
            "where",
            f"users={user}",
            "format=account,user,partition,qos,defaultqos",
        ).split()
    )


@pytest.fixture
def real_tag() -> str:
    return f"t-qm{secrets.token_hex(3)}"


@pytest.fixture
def cleanup_qos(real_tag: str) -> Iterator[None]:
    before = assocs_of("rxcarol")
    yield
    # Whatever the test left: no QOS of this tag, rxcarol's associations as they were (an
    # association goes only once its jobs have left, hence the retries).
    partition = sh("scontrol", "show", "partition", "gpu", "-o")
    if f" QoS={real_tag}" in partition:
        sh("scontrol", "update", "PartitionName=gpu", "QOS=")
    for line in assocs_of("rxcarol"):
        if line not in before and "|gpu|" in line:
            argv = [
                "sacctmgr",
                "-i",
                "delete",
                "user",
                "where",
                "name=rxcarol",
                f"account={line.split('|')[0]}",
                "partition=gpu",
            ]
            wait_for(
                lambda argv=argv: (
                    subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
                ),
                timeout=60,
                what="rxcarol's partition association to go",
            )
    for name in sh("sacctmgr", "-P", "-n", "show", "qos", "format=name").split():
        if name.startswith(real_tag):
            subprocess.run(["sacctmgr", "-i", "delete", "qos", name], check=False)


@pytest.mark.cluster
@pytest.mark.usefixtures("slurm_cluster", "cleanup_qos")
def test_real_removal_while_a_job_runs_keeps_the_job_and_restores_the_rest(
    ledger: Ledger, real_tag: str
) -> None:
    before = assocs_of("rxcarol")
    slurm = SlurmCli()
    quota = set_quota(ledger, partition="gpu", scope="user", subject="rxcarol", max_gpus=2)
    (entry,) = qos_mirror.sync(ledger, slurm, real_tag)
    name = f"{real_tag}-gpu-user-rxcarol"
    assert entry["qos"] == name and entry["users"] == ["rxcarol"], entry
    assert f"rxtest|rxcarol|gpu|normal,{name}|{name}" in assocs_of("rxcarol")
    job = sh(
        "sbatch",
        "--parsable",
        "-p",
        "gpu",
        "--gpus=1",
        "-o",
        "/dev/null",
        "--wrap",
        "sleep 120",
        user="rxcarol",
    ).strip()
    try:
        assert sh("squeue", "-h", "-j", job, "-o", "%q").strip() == name
        drop_quota(ledger, quota)
        (removed,) = qos_mirror.sync(ledger, slurm, real_tag)
        assert removed["removed"] is True, removed
        # While its job lives the association cannot go; without our QOS it inherits all.
        kept = removed.get("kept_associations", [])
        assert kept in ([], ["rxcarol/rxtest/gpu"])
        assert name not in sh("sacctmgr", "-P", "-n", "show", "qos", "format=name").split()
        assert sh("squeue", "-h", "-j", job, "-o", "%T").strip() in ("RUNNING", "PENDING")
    finally:
        subprocess.run(["scancel", job], check=False)
    if kept:
        # Once the job ends, a later sync cannot know it: the association stays, harmless.
        assert "rxtest|rxcarol|gpu|normal|" in assocs_of("rxcarol")
    else:
        assert assocs_of("rxcarol") == before


@pytest.mark.cluster
@pytest.mark.usefixtures("slurm_cluster", "cleanup_qos")
def test_real_deployment_quota_attaches_and_detaches_the_partition_qos(
    ledger: Ledger, real_tag: str
) -> None:
    slurm = SlurmCli()
    # Six GPUs is all the cluster has: attached for real, it holds back nobody's work.
    quota = set_quota(ledger, partition="gpu", max_gpus=6)
    (entry,) = qos_mirror.sync(ledger, slurm, real_tag)
    assert entry["attached"] == f"partition gpu (QOS={real_tag}-gpu)", entry
    assert f" QoS={real_tag}-gpu " in sh("scontrol", "show", "partition", "gpu", "-o")
    assert sh("sacctmgr", "-P", "-n", "show", "qos", f"{real_tag}-gpu", "format=grptres") == (
        "gres/gpu=6\n"
    )
    drop_quota(ledger, quota)
    (removed,) = qos_mirror.sync(ledger, slurm, real_tag)
    assert removed == {"qos": f"{real_tag}-gpu", "removed": True, "users": []}
    assert " QoS=N/A " in sh("scontrol", "show", "partition", "gpu", "-o")
