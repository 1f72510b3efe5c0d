"""The exec agent: a small program the holder starts inside each awake container (docs/exec.md,
"The agent"). Standard library only, and only the stdlib-only parts of rx-slurm (the protocol,
MUNGE's binding): it runs on the container's own Python, its code reached through descriptors
the holder passes in."""
