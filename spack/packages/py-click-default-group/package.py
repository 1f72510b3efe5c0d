# Copyright rx-slurm developers.
#
# SPDX-License-Identifier: Apache-2.0

from spack.package import *

try:
    from spack_repo.builtin.build_systems.python import PythonPackage
except ImportError:
    pass


class PyClickDefaultGroup(PythonPackage):
    """click.Group that invokes a default subcommand (a dependency of sqlite-utils)."""

    homepage = "https://github.com/click-contrib/click-default-group"
    pypi = "click-default-group/click_default_group-1.2.4.tar.gz"

    license("BSD-3-Clause")

    version("1.2.4", sha256="eb3f3c99ec0d456ca6cd2a7f08f7d4e91771bef51b01bdd9580cc6450fe1251e")

    depends_on("py-flit-core@3.2:3", type="build")
    depends_on("py-click", type=("build", "run"))
