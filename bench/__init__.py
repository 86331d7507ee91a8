"""The benchmark (`make bench`): figures, never a verdict."""
