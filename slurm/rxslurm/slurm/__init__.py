"""Everything that touches Slurm: the command-line adapter, batch-script templates, hooks."""
