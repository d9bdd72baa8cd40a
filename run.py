"""mixmerge's Hydra entry point: compose the config, run the chosen strategy, return the objective.

    python run.py                                   # the default comparison on SmolLM2-135M
    python run.py model=tiny trainer.max_steps=5    # the same loop on a tiny model, in seconds
    python run.py -m merge=ties,dare,della merge.weight=0.3,0.5,0.7
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from mixmerge.job import run_job  # imported here so that --help and --cfg stay fast

    return run_job(cfg, run_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
