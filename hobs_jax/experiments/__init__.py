"""Experiments as library code (the modules of this package; see each module's doc)."""
