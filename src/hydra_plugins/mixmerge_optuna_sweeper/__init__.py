"""mixmerge's Optuna sweeper for Hydra (``hydra/sweeper=mixmerge_optuna``); see _impl.py for why."""
