"""The ledger: rxd's memory in SQLite, its schema, records and audit trail."""
