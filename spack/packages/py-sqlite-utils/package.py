# Copyright rx-slurm developers.
#
# SPDX-License-Identifier: Apache-2.0

from spack.package import *

try:
    from spack_repo.builtin.build_systems.python import PythonPackage
except ImportError:
    pass


class PySqliteUtils(PythonPackage):
    """CLI tool and Python library for manipulating SQLite databases."""

    # Not in Spack's builtin repository; rx-slurm's ledger is built on it.
    homepage = "https://sqlite-utils.datasette.io"
    pypi = "sqlite-utils/sqlite_utils-4.2.1.tar.gz"

    license("Apache-2.0")

    version("4.2.1", sha256="76114b6a5414714e6c70e5fa5c4781b301b590f6951b5da39c8cc60c21382ba1")

    depends_on("py-setuptools@77:", type="build")

    with default_args(type=("build", "run")):
        depends_on("python@3.10:")
        depends_on("py-click@8.3.1:")
        depends_on("py-click-default-group@1.2.3:")
        depends_on("py-pluggy")
        depends_on("py-python-dateutil")
        depends_on("py-sqlite-fts4")
        depends_on("py-tabulate")
        # sqlite-utils' `install` command runs pip.
        depends_on("py-pip")
