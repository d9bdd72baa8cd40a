"""Running mixmerge past one machine: a local Slurm + PostgreSQL test bed for tests and `make cluster`."""
