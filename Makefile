# The two commands a newcomer needs (see README.md):
#   make demo   set up everything, start the local Slurm cluster and rxd, run a short demo
#   make test   set up everything, start the local Slurm cluster, run the checks and tests
# Both must run as root on a Debian 12 machine (they install packages and start services).

VENV := .venv
PYTHON := /usr/bin/python3

.PHONY: venv cluster demo test lint bench teardown

venv: $(VENV)/.installed

# Debian's python, not a pyenv/conda one under /root: test users and Slurm jobs run these binaries.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-dev; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

cluster:
	tests/cluster/setup.sh

lint: venv
	$(VENV)/bin/ruff check .

# mypy at the strictness pyproject.toml states ([tool.mypy]), over every rxslurm portion.
.PHONY: typecheck
typecheck: venv
	$(VENV)/bin/mypy

# The fast tier (no Slurm job, no container) first, so a broken unit fails in a minute or two;
# then the cluster suite on the real Slurm cluster and the real Apptainer.
test: venv lint typecheck cluster
	tests/cluster/forget.sh
	RXSLURM_TEST_CLUSTER=existing $(VENV)/bin/pytest -m "not cluster"
	RXSLURM_TEST_CLUSTER=existing $(VENV)/bin/pytest -m cluster

demo: venv cluster
	tests/cluster/demo.sh

bench: venv cluster
	RXSLURM_TEST_CLUSTER=existing $(VENV)/bin/python -m bench

teardown:
	tests/cluster/teardown.sh
