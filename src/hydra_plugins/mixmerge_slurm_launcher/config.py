"""The launcher's structured config, registered as ``hydra/launcher=mixmerge_slurm``: submitit's Slurm
options plus the two stages (``prepare``) and how failures are watched (``poll_s``, ``lost_after_s``)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class MixmergeSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.mixmerge_slurm_launcher.launcher.StagedSlurmLauncher"
    # Before a batch's jobs, train what they share (strategy=prepare) as one job per distinct training
    # config, and wait for it; the merge/evaluate jobs then find the specialists and mixture in the cache.
    prepare: bool = True
    # Seconds between looks at the jobs' result files and squeue.
    poll_s: float = 1.0
    # A job gone from squeue without a result this long (s) failed outside Python (killed, out of memory,
    # node lost); its log is reported. Covers clusters without accounting (no sacct).
    lost_after_s: float = 30.0


ConfigStore.instance().store(group="hydra/launcher", name="mixmerge_slurm", node=MixmergeSlurmConf,
                             provider="mixmerge")
