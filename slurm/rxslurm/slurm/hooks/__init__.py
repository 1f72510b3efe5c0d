"""Programs Slurm runs for every job (PrologSlurmctld / EpilogSlurmctld) that tell rxd at once."""
