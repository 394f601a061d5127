"""`make bench`: PGPS / PGPS+ / RPSS against the constant-patch baseline, side by side."""
