"""Shared fixtures come from plugin modules: each part of the suite adds its own to this list."""

pytest_plugins = ["tests.support.cluster", "tests.support.daemon", "tests.support.real_apptainer"]
