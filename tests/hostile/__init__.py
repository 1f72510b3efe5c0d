"""Security findings as tests: each recipe of the security review, run as ordinary test users."""
