"""Container images on the daemon's host: Apptainer there, the image cache and pulls."""
