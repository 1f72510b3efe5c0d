"""The rendered holder.sh, pinned byte for byte: any change to the script a container's Slurm job
runs shows up here as a diff to review (regenerate on purpose: RXSLURM_REGEN_GOLDEN=1)."""

from __future__ import annotations

from pathlib import Path

from rxslurm.slurm.script import render_batch_script, template_params
from tests.support.golden import assert_golden

GOLDEN = Path(__file__).parent / "fixtures" / "slurm" / "holder.golden.sh"

# What rxd renders for a GPU project with the default [apptainer] settings (fakeroot, the
# project's own home and /tmp), plus a workspace whose name needs quoting.
VALUES: dict[str, object] = {
    "instance": "rx-demo",
    "image": "/var/lib/rxslurm/images/base.sif",
    "overlay": "/var/lib/rxslurm/containers/rx-demo/overlay.img",
    "workspace": "/srv/rx/workspaces/it's a project",
    "binds": "/etc/hosts:/etc/hosts:ro,/opt/datasets",
    "gpu_flag": "--nv",
    "state_dir": "/var/lib/rxslurm/containers/rx-demo",
    "grace_s": 10,
    "apptainer": "/usr/bin/apptainer",
    "fakeroot": "--fakeroot",
    "home": "/var/lib/rxslurm/containers/rx-demo/home:/root",
    "private_tmp": "yes",
    "env": "QVBQVEFJTkVSRU5WX1dBTkRCX1BST0pFQ1Q9ZGVtbwA=",
    "agent_path": "/usr/lib/python3/dist-packages",
    "libmunge": "/usr/lib/x86_64-linux-gnu/libmunge.so.2.0.0",
    "munge_socket": "/run/munge/munge.socket.2",
    # python3 -m http.server 8000, NUL-ended words in base64 (runtime/apptainer.py holder_words).
    "service": "cHl0aG9uMwAtbQBodHRwLnNlcnZlcgA4MDAwAA==",
    "port": 8000,
    "output_cap": 8388608,
    "restarts": 3,
}


def test_the_rendered_holder_script_matches_the_golden_file() -> None:
    assert sorted(VALUES) == sorted(template_params("holder.sh")), (
        "holder.sh's parameters changed: give VALUES one fixed value for each, then regenerate"
    )
    script = render_batch_script("holder.sh", **VALUES)
    assert_golden(GOLDEN, script, "tests/test_holder_golden.py")
