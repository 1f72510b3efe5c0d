"""rxctl: the command-line front end and the API client."""
