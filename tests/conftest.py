"""Shared fixtures come from plugin modules: each part of the suite adds its own to this list."""

# tiers first: it marks tests before -m selects them. real_apptainer before daemon:
# tests.support.daemon imports it, and a plugin must be imported as one.
pytest_plugins = [
    "tests.support.tiers",
    "tests.support.real_apptainer",
    "tests.support.cluster",
    "tests.support.daemon",
]
