"""A project's persistent container: its states, the commands on it, and the reconciler."""
