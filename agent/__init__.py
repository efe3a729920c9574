"""agent — not yet implemented (see the open issues)."""
