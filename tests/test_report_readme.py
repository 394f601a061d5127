"""The README's result table of the default profile is the committed results/metrics.json, rendered by
`pgps report --readme-table` (issue 14.5: never typed in)."""

from __future__ import annotations

import json
from pathlib import Path

from pgps.report.tables import readme_table

README_TABLE_START = "<!-- results table: `pgps report --readme-table` of the committed results/metrics.json -->"
README_TABLE_END = "<!-- end of results table -->"


def test_readme_results_table_is_the_committed_metrics() -> None:
    """The README's default-profile result table is generated from the committed results/metrics.json, never typed."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert readme.count(README_TABLE_START) == 1 and readme.count(README_TABLE_END) == 1
    shown = readme.split(README_TABLE_START)[1].split(README_TABLE_END)[0].strip("\n")
    metrics = json.loads((root / "results" / "metrics.json").read_text())
    assert shown == readme_table(metrics).strip("\n"), "regenerate it: .venv/bin/pgps report --readme-table"
