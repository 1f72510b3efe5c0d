"""Commands in a running container: the exec server, its relay and its network door."""
