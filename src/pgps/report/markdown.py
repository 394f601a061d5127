"""Kept for `pgps reproduce`, which imports the terminal table from here: it now lives in pgps.report.tables
(built from the metrics.json / timings.json layouts)."""

from pgps.report.tables import summary_table

__all__ = ["summary_table"]
