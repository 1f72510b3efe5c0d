"""Shared fixtures come from plugin modules: each part of the suite adds its own to this list."""

# tiers first: it marks tests before -m selects them. real_apptainer before daemon:
# tests.support.daemon imports it, and a plugin must be imported as one.
pytest_plugins = [
    "tests.support.tiers",
    "tests.support.real_apptainer",
    "tests.support.cluster",
    "tests.support.daemon",
    "tests.support.parallel",
]


def pytest_configure(config: object) -> None:
    """Tests send SIGINT to the commands they start (Ctrl-C tests) and expect it to arrive. A
    suite run in the background of a non-interactive shell (a CI runner's `cmd &`) inherits
    SIGINT and SIGQUIT ignored, and every process it starts would too: a Python child then never
    raises KeyboardInterrupt and a shell cannot trap them. Give the suite the defaults a
    terminal's session has, so what a test checks does not depend on how it was started."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
