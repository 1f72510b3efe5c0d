"""What rxctl, rxd and Slurm's hooks agree on, in the standard library only.

Socket paths, the job-comment format, the table of project settings, container states, route
names and the exec wire format live here once, so the two ends of a conversation cannot drift.
"""
