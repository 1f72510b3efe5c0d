"""Partition quotas, their leases, and their mirror in Slurm QOSes."""
