"""Container images on the daemon's host: the image cache and pulls."""
