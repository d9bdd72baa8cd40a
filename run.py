"""mixmerge's Hydra entry point: compose the config, run the chosen strategy, return the objective.

    python run.py                                   # the default comparison on SmolLM2-135M
    python run.py model=tiny trainer.max_steps=5    # the same loop on a tiny model, in seconds
    python run.py -m merge=ties,dare,della merge.weight=0.3,0.5,0.7
    python run.py strategy=report strategy.sweep_dir=outputs/multirun/DATE/TIME   # that sweep's tables and verdict
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from hydra.types import RunMode

    from mixmerge.job import run_job  # imported here so that --help and --cfg stay fast

    hydra_cfg = HydraConfig.get()
    # Every job of a multirun joins one W&B group named after its sweep directory.
    group = "/".join(Path(hydra_cfg.sweep.dir).parts[-2:]) if hydra_cfg.mode == RunMode.MULTIRUN else None
    return run_job(cfg, run_dir=hydra_cfg.runtime.output_dir, group=group)


if __name__ == "__main__":
    main()
