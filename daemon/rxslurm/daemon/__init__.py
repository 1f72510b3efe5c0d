"""rxd: the root daemon that keeps the ledger, runs the API and acts for bound users."""
