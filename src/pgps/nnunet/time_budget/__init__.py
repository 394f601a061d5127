"""The time budget (``PGPS_TIME_BUDGET``): a WALL-CLOCK budget for training, from which the
trainer chooses how many epochs each curriculum stage gets. (Not the run's epoch/iteration
budget ``PGPS_NUM_EPOCHS``/``PGPS_ITERS_PER_EPOCH``, which it replaces when set.)

- ``plan``: the typed plan and the arithmetic behind it (cost model, epochs per stage); pure.
- ``controller``: the closed loop: given the plan and the epochs trained so far on the one
  training clock (``pgps.nnunet.clock``), the decision for the epochs not yet trained; pure.
- ``warmup``: the timed warm-up inside the trainer that measures the costs (torch).
- ``trainer_glue``: plan, apply and follow the budget in a trainer, DDP broadcast included.
"""
