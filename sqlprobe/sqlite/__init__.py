"""SQLite's knowledge: its lock bytes and names, the database, WAL and WAL-index headers (pure
parsers), what each lock means to a new instance, and the guarded read-only probe."""
