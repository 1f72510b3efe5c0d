"""Shared fixtures come from plugin modules: each part of the suite adds its own to this list."""

# real_apptainer first: tests.support.daemon imports it, and a plugin must be imported as one.
pytest_plugins = ["tests.support.real_apptainer", "tests.support.cluster", "tests.support.daemon"]
