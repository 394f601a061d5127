"""Compile settings for a curriculum: enough static graphs for every stage shape."""

from __future__ import annotations

import torch._dynamo.config as dynamo_config

from pgps.nnunet.compiling import configure_static_recompiles, distinct_graphs
from pgps.schedule import build_schedule


def test_distinct_graphs_counts_stages_candidates_and_validation() -> None:
    pgps = build_schedule((128, 128, 128), (5, 5, 5), 1000, mode="pgps")
    assert distinct_graphs(pgps) == 9 + 2
    rpss = build_schedule((128, 128, 128), (5, 5, 5), 1000, mode="rpss")
    assert distinct_graphs(rpss) == 9 + 2  # candidates; the full patch is among them
    const = build_schedule((128, 128, 128), (5, 5, 5), 1000, mode="constant")
    assert distinct_graphs(const) == 3


def test_configure_raises_limit_above_the_default_and_turns_off_automatic_dynamic() -> None:
    saved = (
        dynamo_config.recompile_limit,
        dynamo_config.automatic_dynamic_shapes,
        dynamo_config.accumulated_recompile_limit,
    )
    try:
        dynamo_config.recompile_limit = 8
        sched = build_schedule((40, 56, 40), (3, 3, 3), 1000, mode="pgps")  # 14 stages > dynamo's default 8
        got = configure_static_recompiles(sched)
        assert dynamo_config.automatic_dynamic_shapes is False
        assert dynamo_config.recompile_limit == got["recompile_limit"] >= distinct_graphs(sched) == 16
        assert dynamo_config.accumulated_recompile_limit >= dynamo_config.recompile_limit
    finally:
        (
            dynamo_config.recompile_limit,
            dynamo_config.automatic_dynamic_shapes,
            dynamo_config.accumulated_recompile_limit,
        ) = saved
