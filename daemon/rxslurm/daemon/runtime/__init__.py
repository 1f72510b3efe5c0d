"""The container runtime: Apptainer, the one adapter behind the ContainerRuntime port
(rxslurm.daemon.ports), and the holder's status file it reads."""
