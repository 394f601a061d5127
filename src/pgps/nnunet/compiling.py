"""torch.compile across a curriculum: one static graph per patch shape.

nnU-Net 2.8 compiles the network on CUDA with torch's defaults. With those, the second input
shape makes dynamo recompile with symbolic ("automatic dynamic") shapes; measured on an H200
(torch 2.11, nnU-Net's 128^3 U-Net, benchmarks/gpu_stage_speed.py) that recompile ran for more
than 5 minutes without finishing, while a static compile took 32-43 s per shape and its steps
were 1.6x faster than eager at the full patch. A PGPS run also needs more distinct shapes
(stages, validation in eval mode, RPSS candidates) than dynamo's default recompile limit of 8;
past it dynamo silently falls back to eager. So we keep nnU-Net's own compile call and set
these two documented dynamo options for the training process.
"""

from __future__ import annotations

from pgps.schedule import Schedule


def distinct_graphs(schedule: Schedule) -> int:
    """Upper bound on the graphs a run compiles: every (patch, batch) it trains on, in train
    mode, plus validation and inference at the planned patch (eval mode, no grad)."""
    shapes = {(st.patch_size, st.batch_size) for st in schedule.stages}
    shapes |= {(c, schedule.planned_batch_size) for c in schedule.candidates}
    return len(shapes) + 2


def configure_static_recompiles(schedule: Schedule) -> dict[str, object]:
    """Static per-shape graphs, and room for all of them; returns the values set."""
    import torch._dynamo.config as dynamo_config

    limit = max(int(dynamo_config.recompile_limit), distinct_graphs(schedule) + 2)
    dynamo_config.automatic_dynamic_shapes = False
    dynamo_config.recompile_limit = limit
    dynamo_config.accumulated_recompile_limit = max(int(dynamo_config.accumulated_recompile_limit), 4 * limit)
    return {"automatic_dynamic_shapes": False, "recompile_limit": limit}
