"""`strategy=analyze`: weight analysis and the mix-or-merge recommendation, without evaluation.

Three ways to get the models, first match wins:

1. ``analysis.paths={name: FOLDER}`` with ``analysis.base=FOLDER``: analyse those folders as they are;
2. ``analysis.probe.enabled=true``: a short fine-tune per task (``analysis.probe.steps`` steps instead of
   ``trainer.max_steps``; cached like any specialist, under its own key) → ``recommend_from_probe``,
   so the recommendation comes before the full training is paid for;
3. otherwise the specialists of the current config (trained, or found in the cache).

Writes ``<run dir>/analysis/`` (tables, plots, report, recommendation.json) and prints the recommendation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixmerge.files import write_json_atomic

log = logging.getLogger(__name__)


def probe_config(cfg: Mapping[str, Any]) -> dict:
    """The run config with ``trainer.max_steps`` replaced by ``analysis.probe.steps``."""
    steps = (cfg["analysis"].get("probe") or {}).get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"analysis.probe.steps={steps!r} must be a positive integer (fine-tuning steps per task)")
    return {**cfg, "trainer": {**cfg["trainer"], "max_steps": steps}}


def _given_folders(acfg: Mapping[str, Any]) -> tuple[Path, dict[str, Path]]:
    base = acfg.get("base")
    if not base:
        raise ValueError("analysis.paths is set but analysis.base is not; give analysis.base=FOLDER "
                         "(the model the others were fine-tuned from)")
    folders = {"base": Path(base), **{str(n): Path(p) for n, p in acfg["paths"].items()}}
    for name, path in folders.items():
        if not path.is_dir():
            raise FileNotFoundError(f"analysis.{'base' if name == 'base' else 'paths.' + name}={str(path)!r} "
                                    "is not a folder")
    base_path = folders.pop("base")
    return base_path, folders


def _pair(acfg: Mapping[str, Any], names: list[str]) -> tuple[str, str] | None:
    """The first configured pair whose models exist, else None (recommend_from_probe takes the first two)."""
    for p in acfg.get("pairs") or []:
        if p[0] in names and p[1] in names:
            return (p[0], p[1])
    return None


def run(cfg: Mapping[str, Any], *, store, run_dir: Path, tracker) -> None:
    from mixmerge.analysis.stage import recommend_from_probe, run_analysis

    acfg = dict(cfg["analysis"])
    out_dir = Path(run_dir) / "analysis"
    probe = dict(acfg.get("probe") or {})
    if acfg.get("paths"):
        base_path, models = _given_folders(acfg)
        source = "folders"
    else:
        from mixmerge.data import load_tasks
        from mixmerge.stages import ensure_base, ensure_specialist

        train_cfg = probe_config(cfg) if probe.get("enabled") else cfg
        base = ensure_base(cfg, store)
        tasks = load_tasks(cfg["task"], store=store, seed=cfg["seed"])
        if len(tasks) < 2:
            raise ValueError(f"strategy=analyze correlates task vectors and needs two tasks; task.tasks has "
                             f"{sorted(tasks)} (use task=mixture or task=three)")
        variants = [ensure_specialist(train_cfg, store, tracker, base, t, s) for t, s in tasks.items()]
        base_path, models = base.path, {v.name: v.path for v in variants}
        source = "probe" if probe.get("enabled") else "specialists"
    log.info("analysing %s against %s (%s)", sorted(models), base_path, source)
    outputs = run_analysis(base_path, models, acfg, out_dir, run=tracker.wandb_run)
    rec = outputs.recommendation
    if source == "probe":
        rec, _ = recommend_from_probe(base_path, models, acfg["thresholds"], _pair(acfg, list(models)))
        write_json_atomic(out_dir / "recommendation.json",
                          {"recommendation": rec.to_dict(), "check": None, "probe_steps": probe["steps"],
                           "models": {n: str(p) for n, p in models.items()}})
    if rec is None:
        print("No recommendation: analysis.pairs names no two of the analysed models "
              f"({sorted(models)}); set analysis.pairs=null to correlate every pair.")
    else:
        what = f"probe of {probe['steps']} steps per task" if source == "probe" else source
        print(f"Recommendation ({what}): {rec.choice} — {rec.reason}")
        tracker.log_summary({"recommendation": rec.choice, "r_mean": rec.r_mean})
    return None
