"""Helpers and pytest plugins shared by the test suite (listed in tests/conftest.py)."""
