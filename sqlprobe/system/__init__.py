"""The OS backend: processes, their descriptors, lock tables, F_GETLK, safe read-only file
access, and bounded time. Knows nothing of SQLite or opencode."""
