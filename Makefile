# The commands a newcomer needs (see README.md):
#   make demo   set up everything, start the local Slurm cluster and rxd, run a short demo
#   make test   set up everything, start the local Slurm cluster, run the checks and tests
#   make unit   only the fast unit tier: no root, no Slurm, under a minute
# demo and test must run as root on a Debian 12 machine (they install packages and start
# services); unit needs neither root nor Slurm.

VENV := .venv
PYTHON := /usr/bin/python3

.PHONY: venv cluster demo test unit lint bench teardown spank

# The test tiers, chosen by pytest markers (tests/support/tiers.py says which marker means what;
# tests/test_tiers.py checks that every test is in exactly one tier):
#   unit     no root, no Slurm, fast; run as an unprivileged user when make runs as root
#   host     needs root (a real rxd, test users), the cluster's munged, or is slow (a wheel
#            build); no Slurm job
#   cluster  the real Slurm cluster and the real Apptainer
UNIT_TIER := not cluster and not root and not munged and not slow
HOST_TIER := not cluster and (root or munged or slow)
CLUSTER_TIER := cluster

venv: $(VENV)/.installed

# Debian's python, not a pyenv/conda one under /root: test users and Slurm jobs run these binaries.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-dev; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[daemon,test]'
	# setuptools' editable finder imports pathlib, urllib and ipaddress at every interpreter start
	# (a tenth of an `rxctl exec`); rxslurm is a namespace package over these folders, so their
	# paths in a plain .pth find the same modules, new ones included, as a wheel's install would.
	cd $(VENV)/lib/python3*/site-packages && rm -f __editable__.rx_slurm-*.pth && \
	  printf '$(CURDIR)/%s\n' daemon slurm cli protocol agent > rxslurm-folders.pth
	touch $@

cluster:
	tests/cluster/setup.sh

# The SPANK plugin (--rx-project): slurm/spank/rx_spank.so; needs gcc and Slurm's spank.h
# (Debian: libslurm-dev). `make -C slurm/spank install` puts it in /usr/lib/rxslurm.
spank:
	$(MAKE) -C slurm/spank

# ruff, and the layer contract in .importlinter (which part may import which).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# mypy at the strictness pyproject.toml states ([tool.mypy]), over every rxslurm portion.
.PHONY: typecheck
typecheck: venv
	$(VENV)/bin/mypy

# The unit tier reads the checkout as another user and writes nothing in it (no .pytest_cache).
unit: venv
	tests/support/unprivileged.sh $(VENV)/bin/pytest -p no:cacheprovider -m "$(UNIT_TIER)"

# The cluster tier mostly waits (for Slurm, reconcile passes, Apptainer), so it runs in two parts:
# its test files side by side on CLUSTER_WORKERS pytest-xdist workers (--dist loadfile: a file's
# tests in order on one worker, its module fixtures never shared), then the tests marked `alone`
# (they kill a slurmd, run setup.sh, fill a partition or run the benchmarks) one at a time, with
# nothing beside them. What a test must keep to so that it can run beside others (its own names,
# ports and folders; only its own jobs and processes looked at): tests/support/parallel.py.
CLUSTER_WORKERS ?= 3

# The fast tiers first, so a broken unit fails within a minute, before the cluster is even set
# up; then the host tier; then the cluster suite on the real Slurm cluster and the real Apptainer.
test: venv lint typecheck unit cluster
	tests/cluster/forget.sh
	RXSLURM_TEST_CLUSTER=existing $(VENV)/bin/pytest -m "$(HOST_TIER)"
	RXSLURM_TEST_CLUSTER=existing $(VENV)/bin/pytest -m "$(CLUSTER_TIER) and not alone" \
	  -n $(CLUSTER_WORKERS) --dist loadfile
	RXSLURM_TEST_CLUSTER=existing $(VENV)/bin/pytest -m "$(CLUSTER_TIER) and alone"

demo: venv cluster
	tests/cluster/demo.sh

bench: venv cluster
	RXSLURM_TEST_CLUSTER=existing $(VENV)/bin/python -m bench

teardown:
	tests/cluster/teardown.sh
