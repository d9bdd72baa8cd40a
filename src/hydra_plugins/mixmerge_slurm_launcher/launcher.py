"""Hydra's submitit Slurm launcher with training as its own stage and failures reported where you look.

    launch(batch) -> compose each job's config -> one ``strategy=prepare`` job per distinct training config
    not prepared yet (specialists + mixture, trained once, on one node) -> wait -> the merge/evaluate jobs
    as one job array -> wait, watching result files and squeue -> JobReturns (a failed job: FAILED with
    its error, the path of its Slurm log and the log's last lines in this process's log)

Without the first stage, N jobs of a sweep start at once and N-1 of them hold a GPU each while they wait
on the cache lock for the one that trains the specialists.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

OWN_KEYS = ("prepare", "poll_s", "lost_after_s")
# Strategies whose jobs need the specialists/mixture of their config, and which of them.
TRAINING_STRATEGIES = ("compare", "specialist", "mixture")
PREPARE_JOB_OFFSET = 100000  # job numbers of prepare jobs (their sweep subdirs are prepare_<n>)


def training_signature(cfg: Any) -> str | None:
    """What a job's specialists and mixture depend on, as text; None when the job trains nothing."""
    strategy = OmegaConf.select(cfg, "strategy.name")
    variants = set(OmegaConf.select(cfg, "strategy.variants") or [])
    wanted = sorted(({"specialists"} if variants & {"specialists", "merged"} else set()) | (variants & {"mixture"}))
    if strategy not in TRAINING_STRATEGIES or not wanted:
        return None
    keys = ("model", "task", "finetune", "trainer", "seed", "cache")
    picked = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
              for k in keys}
    return json.dumps({"variants": wanted, **picked}, sort_keys=True, default=str)


def prepare_overrides(overrides: Sequence[str], signature: str, n: int) -> list[str]:
    """The job's overrides with the strategy replaced by ``prepare`` for the variants it needs."""
    kept = [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] != "strategy"]
    variants = ",".join(json.loads(signature)["variants"])
    return [*kept, "strategy=prepare", f"strategy.variants=[{variants}]", f"hydra.sweep.subdir=prepare_{n}"]


class StagedSlurmLauncher(SlurmLauncher):
    def __init__(self, **params: Any) -> None:
        own = {k: params.pop(k) for k in OWN_KEYS}
        super().__init__(**params)
        self.prepare = bool(own["prepare"])
        self.poll_s = float(own["poll_s"])
        self.lost_after_s = float(own["lost_after_s"])
        self.prepared: set[str] = set()  # signatures trained (or found) during this sweep

    # -- submission --------------------------------------------------------------------------------------
    def _executor(self) -> Any:
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in baseparams else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        return executor

    def _submit(self, job_overrides: Sequence[Sequence[str]], first_idx: int) -> list[Any]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        args = [(list(o), "hydra.sweep.dir", first_idx + i, f"job_id_for_{first_idx + i}", Singleton.get_state())
                for i, o in enumerate(job_overrides)]
        return self._executor().map_array(self, *zip(*args, strict=True))

    def _queued(self, job_ids: list[str]) -> set[str]:
        """Those of ``job_ids`` that squeue still lists (pending, running, completing); all of them when
        squeue itself fails (a busy controller is no proof that a job died). ``-r`` lists pending array
        elements one per line (``12_3``, not ``12_[3-5]``); no ``-j``: squeue rejects ids it has forgotten."""
        import getpass

        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-u", getpass.getuser()], capture_output=True,
                              text=True)
        return set(proc.stdout.split()) & set(job_ids) if proc.returncode == 0 else set(job_ids)

    def _wait(self, jobs: list[Any], labels: list[str]) -> list[Any]:
        """Each job's result (a JobReturn) or the exception that says why it has none."""
        out: dict[int, Any] = {}
        try:
            self._poll(jobs, out)
        except BaseException:  # Ctrl-C or a crash here: do not leave the cluster running orphaned jobs
            for i, job in enumerate(jobs):
                if i not in out:
                    job.cancel(check=False)
            raise
        for i, job in enumerate(jobs):
            if isinstance(out[i], Exception) or (isinstance(out[i], JobReturn)
                                                 and out[i].status == JobStatus.FAILED):
                self._report_failure(job, labels[i], out[i])
        return [out[i] for i in range(len(jobs))]

    def _poll(self, jobs: list[Any], out: dict[int, Any]) -> None:
        gone_since: dict[int, float] = {}
        while len(out) < len(jobs):
            pending = [i for i in range(len(jobs)) if i not in out]
            queued = self._queued([jobs[i].job_id for i in pending])
            for i in pending:
                job = jobs[i]
                if job.paths.result_pickle.exists():
                    try:
                        out[i] = job.results()[0]
                    except Exception as e:  # noqa: BLE001 - the job's Python error, reported below
                        out[i] = e
                elif job.job_id not in queued:
                    since = gone_since.setdefault(i, time.time())
                    if time.time() - since > self.lost_after_s:
                        out[i] = RuntimeError(f"Slurm job {job.job_id} ended without a result (killed, out of "
                                              f"memory or time, node lost)")
            if len(out) < len(jobs):
                time.sleep(self.poll_s)

    def _report_failure(self, job: Any, label: str, result: Any) -> None:
        error = result if isinstance(result, Exception) else result._return_value
        tail = ""
        for path in (job.paths.stderr, job.paths.stdout):
            if path.exists() and path.stat().st_size:
                tail = "\n    ".join(path.read_text(errors="replace").splitlines()[-15:])
                break
        where = OmegaConf.select(result.hydra_cfg, "hydra.runtime.output_dir") \
            if isinstance(result, JobReturn) and result.hydra_cfg is not None else None
        log.error("Job %s failed on the cluster (Slurm job %s): %s: %s\n  Slurm log: %s\n  run dir: %s\n  "
                  "last lines:\n    %s", label, job.job_id, type(error).__name__, str(error)[-500:],
                  job.paths.stderr, where or "(none)", tail)

    # -- the two stages ----------------------------------------------------------------------------------
    def _prepare(self, job_overrides: Sequence[Sequence[str]]) -> None:
        todo: dict[str, list[str]] = {}
        for overrides in job_overrides:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            sig = training_signature(cfg)
            if sig is not None and sig not in self.prepared and sig not in todo:
                todo[sig] = list(overrides)
        if not todo:
            return
        n0 = len(self.prepared)
        prep = [prepare_overrides(o, sig, n0 + i) for i, (sig, o) in enumerate(todo.items())]
        jobs = self._submit(prep, PREPARE_JOB_OFFSET + n0)
        for job, sig in zip(jobs, todo, strict=True):
            log.info("Stage 1/2: training %s for %d job(s) as Slurm job %s (log %s)",
                     " + ".join(json.loads(sig)["variants"]), len(job_overrides), job.job_id, job.paths.stdout)
        t0 = time.time()
        results = self._wait(jobs, [f"prepare_{n0 + i}" for i in range(len(jobs))])
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, JobReturn) and result.status == JobStatus.COMPLETED:
                s = result.return_value
                log.info("Stage 1/2 done in %.0f s: Slurm job %s on %s trained %s; already cached: %s",
                         time.time() - t0, job.job_id, s["host"], ", ".join(s["built"]) or "nothing",
                         ", ".join(s["reused"]) or "nothing")
        failed = [j.job_id for j, r in zip(jobs, results, strict=True)
                  if not (isinstance(r, JobReturn) and r.status == JobStatus.COMPLETED)]
        if failed:
            raise RuntimeError(f"the training stage failed (Slurm jobs {failed}; their logs are above); "
                               "no merge/evaluate job was launched")
        self.prepared.update(todo)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        if self.prepare:
            self._prepare(job_overrides)
        log.info("Stage 2/2: %d job(s) on Slurm, sweep dir %s", len(job_overrides), self.config.hydra.sweep.dir)
        labels = []
        for i, overrides in enumerate(job_overrides):
            labels.append(f"#{initial_job_idx + i} ({' '.join(filter_overrides(overrides))})")
            log.info("\t%s", labels[-1])
        jobs = self._submit(job_overrides, initial_job_idx)
        results = self._wait(jobs, labels)
        out = []
        for overrides, result in zip(job_overrides, results, strict=True):
            if isinstance(result, Exception):  # no JobReturn came back: make one, so sweepers see a failure
                result = JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=result)
            out.append(result)
        return out
