"""mixmerge's Optuna sweeper for Hydra (``hydra/sweeper=mixmerge_optuna``); see sweeper.py for why."""
