# Copyright rx-slurm developers.
#
# SPDX-License-Identifier: Apache-2.0

from spack.package import *

try:
    from spack_repo.builtin.build_systems.python import PythonPackage
except ImportError:
    pass


class PySpython(PythonPackage):
    """The Python API for Apptainer and Singularity containers.

    Shadows Spack's builtin py-spython, whose newest version (0.3.1) is older than the 0.3.14
    rx-slurm needs (Apptainer support); keep this repository ahead of builtin."""

    homepage = "https://github.com/singularityhub/singularity-cli"
    pypi = "spython/spython-0.3.14.tar.gz"

    license("MPL-2.0")

    version("0.3.14", sha256="8ad53ef034395cfa2d8a710cc1c3638e4475e5bbc6a2842d317db8013c2e4188")

    depends_on("py-setuptools", type="build")
