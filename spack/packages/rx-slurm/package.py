# Copyright rx-slurm developers.
#
# SPDX-License-Identifier: Apache-2.0

from spack.package import *

try:
    # Spack 1.x keeps build systems in its builtin repository; Spack 0.x exports them above.
    from spack_repo.builtin.build_systems.python import PythonPackage
except ImportError:
    pass


class RxSlurm(PythonPackage):
    """Persistent, GPU-backed Apptainer research containers run as Slurm jobs: rxd, a root
    daemon with an HTTP+JSON API on a Unix socket, and rxctl, its command line."""

    # Not on a package index yet: install from a checkout with `spack develop` or from an sdist
    # in a site mirror (spack/README.md). tests/test_spack_package.py keeps the versions and
    # dependencies below in step with pyproject.toml.
    license("Apache-2.0")

    version("0.1.0")

    with default_args(type="build"):
        depends_on("py-setuptools@77.0.1:")

    # The whole of rx-slurm, rxd too: pyproject's dependencies and its `daemon` extra.
    with default_args(type=("build", "run")):
        depends_on("python@3.11:")
        depends_on("py-aiohttp@3.9:")
        depends_on("py-click@8.1:")
        depends_on("py-sqlite-utils@4.0:")
        depends_on("py-spython@0.3.14:")

    # rxd runs sbatch, squeue, sacct, scontrol and srun, and jobs run apptainer: a site's own
    # installations, usually declared as externals in packages.yaml.
    with default_args(type="run"):
        depends_on("slurm")
        depends_on("apptainer")
