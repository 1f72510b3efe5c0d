"""Slurm QOSes, user associations and partition QOS: the sacctmgr/scontrol calls rxd makes.

Every call is an argv list run as the daemon (root): ``sacctmgr -i`` (no confirmation prompt) for
changes, ``sacctmgr -P -n`` (pipe-separated, no header) for reads. Failures raise the adapter's
errors (``SlurmUnavailable`` when slurmdbd or slurmctld did not answer, ``SlurmRejected`` when
they said no). sacctmgr exits 1 with "Nothing modified/deleted/new added" when a change was
already in place; that is success here, so every change can be repeated safely.

Things Slurm 22.05 does that shape this module:
- sacctmgr lowercases QOS names and descriptions;
- a limit is cleared by setting it to -1 (``MaxTRESPerUser=gres/gpu=-1``, ``GrpJobs=-1``);
- an association cannot be deleted while it has jobs ("Job(s) active"), nor a QOS while it is
  some association's default QOS;
- a partition's QOS is set at run time with ``scontrol update PartitionName=P QOS=Q`` (slurm.conf's
  ``QOS=`` on the PartitionName line makes it survive a restart of slurmctld).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .adapter import SlurmCli
from .errors import SlurmUnavailable, classify

# User, account, partition and QOS names: nothing sacctmgr could read as another setting.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_NOTHING = re.compile(r"nothing (?:new added|modified|deleted)", re.IGNORECASE)
QOS_FIELDS = ("name", "maxtrespu", "maxjobspu", "grptres", "grpjobs", "description")
ASSOC_FIELDS = ("cluster", "account", "user", "partition", "qos", "defaultqos")
# The TRES a limit may name, and how Slurm spells them.
TRES_KEYS = ("gres/gpu", "cpu", "mem")


def check_name(kind: str, value: str) -> str:
    """A user/account/partition/QOS name, refused if sacctmgr could misread it (a ``,`` or
    ``=`` would become another setting, a space another argument)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"invalid {kind} name {value!r}")
    return value


@dataclass(frozen=True)
class QosLimits:
    """The limits rx-slurm mirrors; 0 means none. TRES maps are {"gres/gpu": 2, "cpu": 4, ...}."""

    max_tres_per_user: Mapping[str, int]
    max_jobs_per_user: int
    grp_tres: Mapping[str, int]
    grp_jobs: int

    def settings(self) -> list[str]:
        """``set`` arguments that make a QOS hold exactly these limits (others cleared)."""
        return [
            "MaxTRESPerUser=" + _tres_setting(self.max_tres_per_user),
            f"MaxJobsPerUser={self.max_jobs_per_user or -1}",
            "GrpTRES=" + _tres_setting(self.grp_tres),
            f"GrpJobs={self.grp_jobs or -1}",
        ]


def _tres_setting(values: Mapping[str, int]) -> str:
    unknown = set(values) - set(TRES_KEYS)
    if unknown:
        raise ValueError(f"unknown TRES {sorted(unknown)}; expected {TRES_KEYS}")
    return ",".join(f"{key}={values.get(key) or -1}" for key in TRES_KEYS)


def parse_tres(text: str) -> dict[str, int]:
    """ "cpu=4,gres/gpu=2,mem=4000M" -> {"cpu": 4, "gres/gpu": 2, "mem": 4000} (mem in MB)."""
    found: dict[str, int] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        match = re.fullmatch(r"(\d+)([KMGT]?)", value.strip())
        if not match:
            continue
        number = int(match.group(1))
        scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2)]
        found[key] = int(number * scale) if key == "mem" else number
    return found


@dataclass(frozen=True)
class Qos:
    name: str
    description: str
    limits: QosLimits


@dataclass(frozen=True)
class Association:
    cluster: str
    account: str
    user: str
    partition: str  # "" for the association that covers every partition
    qos: tuple[str, ...]
    default_qos: str


def parse_qos_lines(text: str) -> dict[str, Qos]:
    """``sacctmgr -P -n show qos format=QOS_FIELDS`` -> QOSes by name. The description comes
    last, so a ``|`` inside it stays in it."""
    found = {}
    for line in text.splitlines():
        fields = line.split("|", len(QOS_FIELDS) - 1)
        if len(fields) != len(QOS_FIELDS) or not fields[0]:
            continue
        name, maxtrespu, maxjobspu, grptres, grpjobs, description = fields
        found[name] = Qos(
            name=name,
            description=description,
            limits=QosLimits(
                max_tres_per_user=parse_tres(maxtrespu),
                max_jobs_per_user=int(maxjobspu) if maxjobspu.isdigit() else 0,
                grp_tres=parse_tres(grptres),
                grp_jobs=int(grpjobs) if grpjobs.isdigit() else 0,
            ),
        )
    return found


def parse_assoc_lines(text: str) -> list[Association]:
    """``sacctmgr -P -n show assoc format=ASSOC_FIELDS`` -> associations."""
    found = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != len(ASSOC_FIELDS):
            continue
        cluster, account, user, partition, qos, default_qos = fields
        found.append(
            Association(
                cluster=cluster,
                account=account,
                user=user,
                partition=partition,
                qos=tuple(q for q in qos.split(",") if q),
                default_qos=default_qos,
            )
        )
    return found


class QosAdmin:
    """sacctmgr and scontrol through a ``SlurmCli`` (its binaries, time-out and runner)."""

    def __init__(self, slurm: SlurmCli) -> None:
        self.slurm = slurm

    def _run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        # SlurmCli._call resolves the binary, applies the time-out and classifies failures.
        proc = self.slurm._call(argv, check=False)  # noqa: SLF001 - same package
        if proc.returncode != 0:
            if _NOTHING.search(proc.stdout) and not proc.stderr.strip():
                return proc  # already as asked
            raise classify(argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    # -- reads ----------------------------------------------------------------------------

    def cluster_name(self) -> str:
        proc = self._run(["scontrol", "show", "config"])
        match = re.search(r"^ClusterName\s*=\s*(\S+)", proc.stdout, re.MULTILINE)
        if match is None:
            raise SlurmUnavailable("scontrol show config names no ClusterName", argv=["scontrol"])
        return match.group(1)

    def list_qos(self) -> dict[str, Qos]:
        proc = self._run(["sacctmgr", "-P", "-n", "show", "qos", f"format={','.join(QOS_FIELDS)}"])
        return parse_qos_lines(proc.stdout)

    def associations(
        self, cluster: str, *, user: str | None = None, qos: str | None = None
    ) -> list[Association]:
        """User associations on ``cluster`` (account-only ones are left out), by user or QOS."""
        cluster = check_name("cluster", cluster).lower()
        argv = ["sacctmgr", "-P", "-n", "show", "assoc", "where", f"cluster={cluster}"]
        if user is not None:
            argv.append(f"users={check_name('user', user)}")
        if qos is not None:
            argv.append(f"qos={check_name('QOS', qos)}")
        argv.append(f"format={','.join(ASSOC_FIELDS)}")
        found = parse_assoc_lines(self._run(argv).stdout)
        return [a for a in found if a.user and a.cluster.lower() == cluster]

    def partition_qoses(self) -> dict[str, str]:
        """Every partition's QOS ("" for none), by partition name."""
        proc = self._run(["scontrol", "show", "partition", "--oneliner"])
        found = {}
        for line in proc.stdout.splitlines():
            name = re.search(r"(?:^|\s)PartitionName=(\S+)", line)
            qos = re.search(r"(?:^|\s)QoS=(\S+)", line)
            if name and qos:
                found[name.group(1)] = "" if qos.group(1) == "N/A" else qos.group(1)
        return found

    # -- changes --------------------------------------------------------------------------

    def add_qos(self, name: str, description: str) -> None:
        self._run(
            ["sacctmgr", "-i", "add", "qos", check_name("QOS", name), f"description={description}"]
        )

    def set_qos(self, name: str, limits: QosLimits, description: str | None = None) -> None:
        argv = ["sacctmgr", "-i", "modify", "qos", "where", f"name={check_name('QOS', name)}"]
        argv += ["set", *limits.settings()]
        if description is not None:
            argv.append(f"description={description}")
        self._run(argv)

    def delete_qos(self, name: str) -> None:
        self._run(["sacctmgr", "-i", "delete", "qos", check_name("QOS", name)])

    def _user_where(self, cluster: str, user: str, account: str, partition: str) -> list[str]:
        return [
            "where",
            f"cluster={check_name('cluster', cluster)}",
            f"name={check_name('user', user)}",
            f"account={check_name('account', account)}",
            f"partition={check_name('partition', partition)}",
        ]

    def add_user_association(self, cluster: str, user: str, account: str, partition: str) -> None:
        """A partition-specific association for ``user`` in ``account`` (it inherits the
        account's limits and QOS list, like the user's general one)."""
        self._run(
            [
                "sacctmgr",
                "-i",
                "add",
                "user",
                check_name("user", user),
                f"account={check_name('account', account)}",
                f"partition={check_name('partition', partition)}",
                f"cluster={check_name('cluster', cluster)}",
            ]
        )

    def modify_user_association(
        self,
        cluster: str,
        user: str,
        account: str,
        partition: str,
        *,
        add_qos: str | None = None,
        remove_qos: str | None = None,
        default_qos: str | None = None,
    ) -> None:
        """Add/remove a QOS to the association's list; ``default_qos`` "" resets the default
        to the inherited one."""
        settings = []
        if add_qos is not None:
            settings.append(f"qos+={check_name('QOS', add_qos)}")
        if remove_qos is not None:
            settings.append(f"qos-={check_name('QOS', remove_qos)}")
        if default_qos is not None:
            settings.append(f"defaultqos={check_name('QOS', default_qos) if default_qos else -1}")
        if not settings:
            return
        self._run(
            [
                "sacctmgr",
                "-i",
                "modify",
                "user",
                *self._user_where(cluster, user, account, partition),
            ]
            + ["set", *settings]
        )

    def delete_user_association(
        self, cluster: str, user: str, account: str, partition: str
    ) -> None:
        """Raises ``SlurmRejected`` while the association has jobs."""
        self._run(
            [
                "sacctmgr",
                "-i",
                "delete",
                "user",
                *self._user_where(cluster, user, account, partition),
            ]
        )

    def set_partition_qos(self, partition: str, qos: str) -> None:
        """Attach ``qos`` to the partition ("" detaches), until slurmctld restarts."""
        name = check_name("partition", partition)
        value = check_name("QOS", qos) if qos else ""
        self._run(["scontrol", "update", f"PartitionName={name}", f"QOS={value}"])
