"""How a number is written in the report: one place, so a missing value is always "n/a" and a single fold
never pretends to a spread of 0."""

from __future__ import annotations

import math
import statistics


def num(value: float | int | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def mean_pm(mean: float | None, std: float | None, spec: str = ".4f") -> str:
    """``0.6610 ± 0.0120``; ``0.6610 ± n/a`` where one fold gives no spread."""
    return f"{num(mean, spec)} ± {num(std, spec)}"


def spread(values: list[float], what: str, spec: str = ".2f") -> str:
    """Mean ± std of a list of paired measurements, with how many and their range."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:{spec}} (one {what}: no spread)"
    return (
        f"{statistics.fmean(values):{spec}} ± {statistics.stdev(values):{spec}} "
        f"(mean ± std of {len(values)} {what}s, range {min(values):{spec}}–{max(values):{spec}})"
    )


def signed(value: float | None, spec: str = "+.4f") -> str:
    return num(value, spec)


def p_value(value: float | None) -> str:
    return num(value, ".3g")
