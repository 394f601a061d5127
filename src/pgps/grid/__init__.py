"""The experiment grid on a SLURM cluster (submitit) or on the GPUs of one machine.

The grid IS the DVC pipeline: its stages (resolved from dvc.yaml/params.yaml) become jobs with the
same commands and the same dependency graph, so after the grid a `dvc commit` makes `dvc repro` a no-op.
"""
