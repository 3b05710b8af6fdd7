"""opencode's own knowledge: where it keeps things, its lock directories and their keys, which
keys a new instance takes at start-up (per version), its snapshot repos. Never reads /proc."""
