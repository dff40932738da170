"""Code shared by the toolkit's CLIs (and their tests)."""
