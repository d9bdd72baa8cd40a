"""A toy Hydra app with run.py's shape: returns a known function of merge.weight/density/epsilon as the
objective (a list of two for multi-objective) and writes metrics.json like the pipeline does.

Hooks for tests: ``toy.log_path`` (one JSON line per job), ``toy.exit_at_job`` (hard exit, as if the
sweep were killed), ``toy.fail_if_weight_above`` / ``toy.nan_if_weight_above``; ``eval.limit`` set adds
a deterministic error, standing for a cheap evaluation on a subset.
"""

import json
import math
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

REPO_CONF = Path(__file__).resolve().parents[3] / "conf"
_JOBS_STARTED = 0


def toy_scores(weight: float, density: float, epsilon: float) -> tuple[float, float]:
    """(codegen, codesum): codegen peaks at weight 0.8, codesum at 0.2; both like density 0.6."""
    shared = -((density - 0.6) ** 2) - epsilon
    return 1 - (weight - 0.8) ** 2 + shared, 1 - (weight - 0.2) ** 2 + shared


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    global _JOBS_STARTED
    _JOBS_STARTED += 1
    m = cfg.merge
    if cfg.toy.exit_at_job is not None and cfg.toy.exit_at_job <= _JOBS_STARTED:
        os._exit(137)
    if cfg.toy.log_path:
        with open(cfg.toy.log_path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "weight": m.weight, "density": m.get("density"),
                                "epsilon": m.get("epsilon"), "limit": cfg.eval.limit,
                                "job_num": HydraConfig.get().job.num}) + "\n")
    time.sleep(cfg.toy.sleep_s)
    if cfg.toy.fail_if_weight_above is not None and m.weight > cfg.toy.fail_if_weight_above:
        raise RuntimeError(f"toy failure at weight {m.weight}")
    codegen, codesum = toy_scores(m.weight, m.get("density") or 0.6, m.get("epsilon") or 0.0)
    if cfg.eval.limit is not None:  # a cheap evaluation on a subset: same signal, deterministic error
        codegen += 0.05 * math.sin(97 * m.weight)
        codesum += 0.05 * math.cos(89 * m.weight)
    if cfg.toy.nan_if_weight_above is not None and m.weight > cfg.toy.nan_if_weight_above:
        codegen = float("nan")
    metrics = {"codegen/humaneval_pass@1": codegen, "codesum/bleu4": codesum, "aggregate": (codegen + codesum) / 2}
    objective = [metrics[k] for k in cfg.objective.metric] if OmegaConf.is_list(cfg.objective.metric) \
        else metrics[cfg.objective.metric]
    out = {"variants": {"merged": {"metrics": metrics, "artifact": "none"},
                        "specialist/codegen": {"metrics": {"aggregate": 0.5}, "artifact": "none"},
                        "mixture": {"metrics": {"aggregate": 0.7}, "artifact": "none"}},
           "objective": objective, "config": OmegaConf.to_container(cfg, resolve=True)}
    Path(HydraConfig.get().runtime.output_dir, "metrics.json").write_text(json.dumps(out))
    return objective


if __name__ == "__main__":
    if not any(a.startswith("hydra.searchpath") for a in sys.argv):
        # Lets the toy compose the repo's own hparams_search and hydra/launcher configs.
        sys.argv.append(f"hydra.searchpath=[file://{REPO_CONF}]")
    main()
