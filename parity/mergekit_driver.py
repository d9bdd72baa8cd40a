"""Runs mergekit's own ``mergekit-yaml`` command (its click entry point, in one process so that the
~10 s import is paid once) for each job of a JSON list; run by ``.venv-parity/bin/python``.

    python parity/mergekit_driver.py JOBS.json RESULTS.json

JOBS.json: ``[{"config": PATH, "out": PATH, "lora_cache": PATH}, ...]``; RESULTS.json: ``[{"ok": bool, "error": str}, ...]``.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path


def main(jobs_path: str, results_path: str) -> None:
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    # the random models have no tokenizer: mergekit logs a traceback for each merge ("Failed to copy tokenizer")
    logging.getLogger("mergekit.merge").setLevel(logging.CRITICAL)

    results = []
    for job in json.loads(Path(jobs_path).read_text()):
        try:
            args = [job["config"], job["out"], "--random-seed", "0", "--quiet"]
            # BASE+ADAPTER: mergekit applies the LoRA to the base into this cache first
            args += ["--lora-merge-cache", job["lora_cache"]] if job.get("lora_cache") else []
            mergekit_yaml.main(args, standalone_mode=False)
            results.append({"ok": True, "error": None})
        except BaseException as exc:  # noqa: BLE001 - a refusal is a result here, whatever its type
            if isinstance(exc, KeyboardInterrupt):
                raise
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}\n"
                                                  f"{traceback.format_exc(limit=2)[-600:]}"})
    Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
