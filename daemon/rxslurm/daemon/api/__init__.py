"""rxd's doors: the HTTP API on the Unix socket, the MUNGE network door, the platform's door."""
