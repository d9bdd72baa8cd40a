"""mixmerge's Slurm launcher for Hydra (``hydra/launcher=slurm``): submitit underneath, training first."""
