"""Mirror partition quotas into Slurm QOSes, so plain sbatch work obeys them too.

rxd's leases bind only containers. A quota marked `mirror_qos` is also written into a Slurm QOS
that Slurm enforces on every job of the partition:

- a deployment quota on partition P -> QOS `<tag>-<P>` with `GrpTRES` (gres/gpu, cpu, mem) and
  `GrpJobs` (containers), attached as P's partition QOS (`scontrol update PartitionName=P QOS=`).
  That lasts until slurmctld restarts; `QOS=<tag>-<P>` on P's line in slurm.conf keeps it, and
  every sync puts it back.
- a user quota for Linux user U on P -> QOS `<tag>-<P>-user-<U>` with `MaxTRESPerUser` and
  `MaxJobsPerUser`, made the default QOS of U's associations *for partition P* (one per account U
  has; rxd adds a partition association where there is none). Jobs of U on P without `--qos` get
  it; U's jobs on other partitions keep their QOS. Slurm 22.05 has no partition-scoped QOS for one
  user, and a partition QOS applies to everybody, so associations are the only way.
- a project quota has no Slurm equivalent (Slurm knows accounts and users, not rx-slurm
  projects): it is reported as skipped and rxd enforces it alone.

A QOS is rxd's when its description says `rx-slurm mirror tag=<tag>`; the description also lists
the accounts where rxd made a partition association (`made=a+b`), which removal deletes again.
`sync()` makes Slurm match the ledger: it creates and updates the QOSes of mirrored quotas and
removes rxd's QOSes that no quota wants any more, restoring the associations it changed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from rxslurm.daemon.ledger.store import Ledger
from rxslurm.slurm.adapter import SlurmCli
from rxslurm.slurm.errors import SlurmError, SlurmRejected
from rxslurm.slurm.qos import Association, Qos, QosAdmin, QosLimits, check_name

log = logging.getLogger("rxslurm.qos_mirror")
MARK = "rx-slurm mirror"
PROJECT_SKIPPED = (
    "a project quota has no Slurm equivalent (Slurm knows users and accounts, not rx-slurm "
    "projects); rxd enforces it for containers only"
)
# One sync at a time: two admins changing quotas at once must not interleave sacctmgr calls.
_LOCK = threading.Lock()


def qos_name(tag: str, quota: dict[str, Any]) -> str:
    """`rx-gpu` for a deployment quota on gpu, `rx-gpu-user-alice` for alice's (lowercase:
    sacctmgr lowercases QOS names)."""
    base = f"{tag}-{quota['partition']}"
    if quota["scope"] == "user":
        base += f"-user-{quota['subject']}"
    return base.lower()


def limits_for(quota: dict[str, Any]) -> QosLimits:
    tres = {
        key: quota[column]
        for key, column in (("gres/gpu", "max_gpus"), ("cpu", "max_cpus"), ("mem", "max_mem_mb"))
        if quota[column]
    }
    if quota["scope"] == "user":
        return QosLimits(tres, quota["max_containers"], {}, 0)
    return QosLimits({}, 0, tres, quota["max_containers"])


def describe(tag: str, made: set[str] | frozenset[str] = frozenset()) -> str:
    text = f"{MARK} tag={tag.lower()}"
    return text + (f" made={'+'.join(sorted(made))}" if made else "")


def _words(description: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in description.split() if "=" in w)


def owned(qos: Qos, tag: str) -> bool:
    return qos.description.startswith(MARK) and _words(qos.description).get("tag") == tag.lower()


def _made(qos: Qos | None) -> set[str]:
    if qos is None:
        return set()
    return {a for a in _words(qos.description).get("made", "").split("+") if a}


def shown(limits: QosLimits) -> dict[str, Any]:
    """The limits as Slurm spells them, only those set: {"MaxTRESPerUser": "gres/gpu=2"}."""

    def tres(values: dict[str, int] | Any) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(values.items()) if v)

    found = {
        "MaxTRESPerUser": tres(limits.max_tres_per_user),
        "MaxJobsPerUser": limits.max_jobs_per_user,
        "GrpTRES": tres(limits.grp_tres),
        "GrpJobs": limits.grp_jobs,
    }
    return {k: v for k, v in found.items() if v}


@dataclass(frozen=True)
class _Plan:
    quota: dict[str, Any]
    qos: str
    limits: QosLimits

    def entry(self, **more: Any) -> dict[str, Any]:
        q = self.quota
        return {
            "quota_id": q["id"],
            "partition": q["partition"],
            "scope": q["scope"],
            "subject": q["subject"],
            "qos": self.qos,
            **more,
        }


def sync(ledger: Ledger, slurm: SlurmCli, tag: str = "rx") -> list[dict[str, Any]]:
    """Make Slurm's QOSes match the mirrored quotas; what was done and what is, one entry each.

    Entries: `{quota_id, partition, scope, subject, qos, limits, attached, users}` for a mirror,
    `{..., skipped}` for a quota that cannot be mirrored, `{qos, removed, users}` for a mirror no
    quota wants any more, `{..., error}` when Slurm refused or did not answer (the next sync
    tries again). Never raises for Slurm's errors.
    """
    with _LOCK:
        with ledger.read() as db:
            rows = list(db.table("quotas").rows_where("mirror_qos = 1", order_by="id"))
        results: list[dict[str, Any]] = []
        plans: list[_Plan] = []
        for quota in rows:
            plan = _plan(quota, tag, {p.qos for p in plans}, results)
            if plan is not None:
                plans.append(plan)
        admin = QosAdmin(slurm)
        try:
            cluster = admin.cluster_name()
            existing = admin.list_qos()
            partition_qos = admin.partition_qoses()
        except SlurmError as exc:
            note = f"Slurm did not answer ({exc.message}); QOS mirrors not checked"
            return results + ([p.entry(error=note) for p in plans] or [{"error": note}])
        for plan in plans:
            try:
                results.append(_apply(admin, cluster, plan, existing, partition_qos, tag))
            except (SlurmError, ValueError) as exc:
                log.warning("QOS mirror failed", extra={"qos": plan.qos, "error": str(exc)})
                results.append(plan.entry(error=getattr(exc, "message", None) or str(exc)))
        wanted = {p.qos for p in plans}
        for name, qos in sorted(existing.items()):
            if name in wanted or not owned(qos, tag):
                continue
            try:
                results.append(_remove(admin, cluster, qos, partition_qos))
            except (SlurmError, ValueError) as exc:
                log.warning("QOS mirror removal failed", extra={"qos": name, "error": str(exc)})
                results.append(
                    {"qos": name, "removed": False, "error": getattr(exc, "message", str(exc))}
                )
        return results


def _plan(
    quota: dict[str, Any], tag: str, planned: set[str], results: list[dict[str, Any]]
) -> _Plan | None:
    name = qos_name(tag, quota)
    plan = _Plan(quota, name, limits_for(quota))
    if quota["scope"] == "project":
        results.append(plan.entry(qos=None, skipped=PROJECT_SKIPPED))
        return None
    try:
        check_name("QOS", name)
        if quota["scope"] == "user":
            check_name("user", quota["subject"])
    except ValueError:
        results.append(plan.entry(qos=None, skipped=f"{name!r} cannot be a Slurm QOS or user name"))
        return None
    if name in planned:
        results.append(plan.entry(skipped=f"another mirrored quota already uses QOS {name}"))
        return None
    return plan


def _apply(
    admin: QosAdmin,
    cluster: str,
    plan: _Plan,
    existing: dict[str, Qos],
    partition_qos: dict[str, str],
    tag: str,
) -> dict[str, Any]:
    quota, name = plan.quota, plan.qos
    partition = quota["partition"]
    if partition not in partition_qos:
        return plan.entry(skipped=f"Slurm has no partition {partition}")
    current = existing.get(name)
    if current is not None and not owned(current, tag):
        return plan.entry(skipped=f"QOS {name} exists and is not this rx-slurm's; left alone")
    if quota["scope"] == "deployment":
        attached = partition_qos[partition]
        if attached and attached != name:
            return plan.entry(
                skipped=f"partition {partition} already has QOS {attached}, set by the site; "
                "rx-slurm does not replace it"
            )
        if current is None:
            admin.add_qos(name, describe(tag))
        admin.set_qos(name, plan.limits)
        if attached != name:
            # Jobs in the partition count against the partition QOS as well as their own.
            admin.set_partition_qos(partition, name)
            partition_qos[partition] = name
        return plan.entry(
            limits=shown(plan.limits),
            attached=f"partition {partition} (QOS={name})",
            users=[],
        )
    user = quota["subject"]
    # sacctmgr shows partition names lowercased.
    partition = partition.lower()
    assocs = admin.associations(cluster, user=user)
    accounts = sorted({a.account for a in assocs if a.partition in ("", partition)})
    if not accounts:
        return plan.entry(skipped=f"Slurm has no association for user {user} on {cluster}")
    made = _made(current)
    if current is None:
        admin.add_qos(name, describe(tag))
    admin.set_qos(name, plan.limits)
    for account in accounts:
        mine = [a for a in assocs if a.account == account and a.partition == partition]
        if not mine:
            # The user's jobs on this partition now match this association, not the general one.
            admin.add_user_association(cluster, user, account, partition)
            made.add(account)
            # Record it at once: a failure later must not lose what to delete on removal.
            admin.set_qos(name, plan.limits, description=describe(tag, made))
        if not mine or name not in mine[0].qos or mine[0].default_qos != name:
            admin.modify_user_association(
                cluster, user, account, partition, add_qos=name, default_qos=name
            )
    return plan.entry(
        limits=shown(plan.limits),
        attached=f"default QOS of {user}'s associations on partition {partition} "
        f"(accounts {', '.join(accounts)})",
        users=[user],
    )


def _remove(
    admin: QosAdmin, cluster: str, qos: Qos, partition_qos: dict[str, str]
) -> dict[str, Any]:
    name = qos.name
    for partition, attached in sorted(partition_qos.items()):
        if attached == name:
            admin.set_partition_qos(partition, "")
    assocs: list[Association] = admin.associations(cluster, qos=name)
    for a in assocs:
        admin.modify_user_association(
            cluster,
            a.user,
            a.account,
            a.partition,
            remove_qos=name,
            default_qos="" if a.default_qos == name else None,
        )
    kept = []
    made = _made(qos)
    for a in assocs:
        if a.partition and a.account in made:
            try:
                admin.delete_user_association(cluster, a.user, a.account, a.partition)
            except SlurmRejected as exc:
                # Jobs still run under it ("Job(s) active"); it now inherits everything, like
                # the user's general association, so leaving it is harmless.
                log.info("association kept", extra={"user": a.user, "error": exc.message})
                kept.append(f"{a.user}/{a.account}/{a.partition}")
    admin.delete_qos(name)
    entry: dict[str, Any] = {
        "qos": name,
        "removed": True,
        "users": sorted({a.user for a in assocs}),
    }
    if kept:
        entry["kept_associations"] = kept
    return entry
