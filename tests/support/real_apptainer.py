"""The real Apptainer and the images container tests run, as the test cluster installs them.

tests/cluster/apptainer.sh installs Apptainer at Debian's path and tests/cluster/images.sh builds
the images into a cache outside the checkout; tests/cluster/setup.sh runs both. Test daemons are
configured with these absolute paths (``[apptainer] binary``, project images), so they never
depend on what else is on PATH and never pull.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

APPTAINER = "/usr/bin/apptainer"
IMAGE_DIR = Path("/var/cache/rxslurm/images")
# Debian minbase of the machine's release with python3 and pip (see tests/cluster/images.sh).
BASE_IMAGE = IMAGE_DIR / "rx-base.sif"
SETUP_HINT = "run tests/cluster/setup.sh (or tests/cluster/apptainer.sh and images.sh) as root"


@pytest.fixture(scope="session")
def container_runtime() -> str:
    """The Apptainer program, once the runtime and the base image are there; fails clearly
    (once, for every test that asks) when they are not."""
    if not os.access(APPTAINER, os.X_OK):
        pytest.fail(f"{APPTAINER} is not installed: {SETUP_HINT}", pytrace=False)
    if not BASE_IMAGE.is_file():
        pytest.fail(f"{BASE_IMAGE} is missing: {SETUP_HINT}", pytrace=False)
    return APPTAINER


def link_image(dest: Path, image: Path = BASE_IMAGE) -> Path:
    """Put an image at ``dest`` (a hard link when the cache is on the same filesystem: the SIF
    is tens of MiB), readable by every test user."""
    dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(image, dest)
    except OSError:
        shutil.copy2(image, dest)
        dest.chmod(0o644)
    return dest
