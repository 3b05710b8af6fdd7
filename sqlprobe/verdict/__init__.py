"""The judge, pure: a Snapshot in, a Verdict out (per-lock effects, holder health, the state,
its reason and exit code). No I/O, no clock."""
