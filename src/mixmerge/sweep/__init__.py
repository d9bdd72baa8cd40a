"""Hyperparameter sweeps: search spaces (space), persistent Optuna studies (study), W&B sweep files
(wandb_sweeps) and the multirun report (report). The Hydra plugin lives in hydra_plugins/."""
