# Copyright rx-slurm developers.
#
# SPDX-License-Identifier: Apache-2.0

from spack.package import *

try:
    from spack_repo.builtin.build_systems.python import PythonPackage
except ImportError:
    pass


class PySqliteFts4(PythonPackage):
    """Python functions for working with SQLite FTS4 search (a dependency of sqlite-utils)."""

    homepage = "https://github.com/simonw/sqlite-fts4"
    pypi = "sqlite-fts4/sqlite-fts4-1.0.3.tar.gz"

    license("Apache-2.0")

    version("1.0.3", sha256="78b05eeaf6680e9dbed8986bde011e9c086a06cb0c931b3cf7da94c214e8930c")

    depends_on("py-setuptools", type="build")
