"""Taking one snapshot of a target: which databases a PATH names, their files, holders, locks
and headers over the observation window, and opencode's own state. Decides and prints nothing."""
