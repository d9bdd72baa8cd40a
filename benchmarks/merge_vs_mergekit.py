"""mixmerge's merge engine side by side with mergekit on the default model (SmolLM2-135M).

Builds two fake specialists of the converted base (seeded low-rank + sparse deltas, no training), then
merges base + specialists with each tool's own command, mergekit's ``mergekit-yaml`` and mixmerge's
standalone ``python run.py strategy=merge ...`` (so both pay interpreter start-up and config parsing),
for linear, ties, dare_ties and della, and prints wall seconds (the best
of ``--repeats`` runs of each tool, in alternating order, with dirty pages flushed before each), peak RSS
and, for the deterministic methods, the largest difference from mergekit's output. Also prints the
in-memory re-merge time per trial.

mixmerge's fused kernels are compiled by numba on their first use after an install and cached on disk
(about 15 s, once); the benchmark does one untimed mixmerge merge per method first so that the timed
runs measure merging, not that one-off compilation.

mergekit is an optional extra, installed only for this benchmark, in its own venv that reuses the
project's torch:

    python3 -m venv .venv-bench
    echo "$PWD/.venv/lib/python3.11/site-packages" > .venv-bench/lib/python3.11/site-packages/base.pth
    .venv-bench/bin/pip install mergekit==0.1.5
    PYTHONPATH=src .venv/bin/python benchmarks/merge_vs_mergekit.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = yaml.safe_load((ROOT / "conf" / "model" / "smollm2-135m.yaml").read_text())
METHODS = {  # name -> (mixmerge/mergekit parameters, deterministic?)
    "linear": ({}, True),
    "ties": ({"density": 0.5}, True),
    "dare_ties": ({"density": 0.5}, False),
    "della": ({"density": 0.5, "epsilon": 0.15}, False),
}
WEIGHTS = (0.5, 0.5)

# Runs a command and reports its wall time, CPU time (user + sys; fairer on a shared machine) and the
# peak RSS of its largest process.
_MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_rss_bytes": usage.ru_maxrss * 1024}))
"""

def measure(cmd: list[str], env: dict | None = None) -> dict:
    os.sync()  # the previous run's output reaches the disk first: no tool pays for another's writeback
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{cmd[0]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    res = json.loads(lines[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res['rc']}:\n{out.stderr[-3000:]}")
    return res


def mixmerge_command(method: str, params: dict, base: Path, models: list[Path], out: Path, run_dir: Path):
    """The README's standalone merge command: no training, no evaluation."""
    return [sys.executable, str(ROOT / "run.py"), "strategy=merge", f"merge={method}", f"merge.base={base}",
            f"merge.models=[{','.join(map(str, models))}]", f"merge.weights=[{','.join(map(str, WEIGHTS))}]",
            *(f"merge.{k}={v}" for k, v in params.items()), f"merge.output={out}", "eval=none", "logger=none",
            "analysis.enabled=false", f"hydra.run.dir={run_dir}"]


def _best(a: dict | None, b: dict) -> dict:
    """The faster run; peak RSS is the larger of the two (the worst case)."""
    if a is None:
        return b
    best = dict(min(a, b, key=lambda r: r["wall_s"]))
    best["peak_rss_bytes"] = max(a["peak_rss_bytes"], b["peak_rss_bytes"])
    return best


def make_specialists(base: Path, out_root: Path, rank: int = 8, rel_scale: float = 0.02) -> list[Path]:
    """Base + seeded low-rank deltas on matrices and sparse deltas on vectors, saved as HF folders."""
    from mixmerge.merge.io import SafetensorsFolder, copy_side_files

    src = SafetensorsFolder(base)
    outs = []
    for i in range(2):
        gen = torch.Generator().manual_seed(1000 + i)
        state = {}
        for name in src.names():
            t = src.get(name).float()
            scale = rel_scale * float(t.std().clamp(min=1e-3))
            if t.dim() == 2:
                a = torch.randn(t.shape[0], rank, generator=gen)
                b = torch.randn(rank, t.shape[1], generator=gen)
                delta = (a @ b) * (scale / rank ** 0.5)
            else:
                delta = torch.randn(t.shape, generator=gen) * scale
                delta = delta * (torch.rand(t.shape, generator=gen) < 0.3)
            state[name] = (t + delta).contiguous()
        folder = out_root / f"specialist{i}"
        folder.mkdir(parents=True)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        copy_side_files(base, folder)
        outs.append(folder)
    src.close()
    return outs


def mergekit_yaml(method: str, params: dict, base: Path, models: list[Path]) -> dict:
    doc = {"merge_method": method, "dtype": "float32", "out_dtype": "float32",
           "models": [{"model": str(m), "parameters": {"weight": w, **params}}
                      for m, w in zip(models, WEIGHTS, strict=True)]}
    if method != "linear":
        doc["base_model"] = str(base)
    return doc


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    from mixmerge.merge.io import SafetensorsFolder

    src = SafetensorsFolder(folder)
    out = {n: src.get(n).float() for n in src.names()}
    src.close()
    return out


def compare_outputs(a: Path, b: Path) -> tuple[float, int]:
    """Largest |difference| and how many entries differ at all (ties at a magnitude threshold are
    broken differently: mergekit's unstable argsort picks arbitrary tied entries, we pick by index)."""
    sa, sb = load_all(a), load_all(b)
    common = set(sa) & set(sb)
    if not common:
        raise RuntimeError(f"no common tensors between {a} and {b}")
    return (max(float((sa[n] - sb[n]).abs().max()) for n in common),
            sum(int((sa[n] != sb[n]).sum()) for n in common))


def in_memory_trial_s(base: Path, models: list[Path], method: str, params: dict) -> tuple[float, float, float | None]:
    """Seconds per in-memory trial: the first (loads the compiled kernels, plans the sparsity), the
    median of weight-only re-merges (reuse the plan, as a weight sweep does) and the median of trials
    with a new density (plan again; None for methods without one)."""
    from mixmerge.merge import InMemoryMerger
    from mixmerge.models import load_model

    merger = InMemoryMerger(base, models)
    model = load_model(base)

    def trial(**overrides) -> float:
        t = time.perf_counter()
        merger.merge_into(model, {"method": method, "weight": 0.5, "seed": 0, **params, **overrides})
        return time.perf_counter() - t

    first = trial()
    reweight = statistics.median(trial(weight=w) for w in (0.3, 0.7, 0.6, 0.4, 0.2))
    replan = (statistics.median(trial(density=d) for d in (0.3, 0.4, 0.6)) if "density" in params else None)
    return first, reweight, replan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(ROOT / "outputs" / "cache"))
    ap.add_argument("--mergekit", default=str(ROOT / ".venv-bench" / "bin" / "mergekit-yaml"))
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per tool and method (the best counts)")
    args = ap.parse_args()

    from mixmerge.cache import ArtifactStore
    from mixmerge.models import resolve_base_model

    base = resolve_base_model(SMOLLM2, ArtifactStore(args.cache)).path
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="merge_bench_") as tmp:
        tmp = Path(tmp)
        models = make_specialists(base, tmp)
        for method in args.methods:
            params, deterministic = METHODS[method]
            cfg_file = tmp / f"{method}.yml"
            cfg_file.write_text(yaml.safe_dump(mergekit_yaml(method, params, base, models)))
            mk_out, mm_out = tmp / f"mk_{method}", tmp / f"mm_{method}"
            mk_cmd = [args.mergekit, str(cfg_file), str(mk_out), "--lazy-unpickle", "--no-cuda", "--quiet",
                      "--random-seed", "0", "--copy-tokenizer"]
            mm_cmd = mixmerge_command(method, params, base, models, mm_out, tmp / "hydra")
            measure(mm_cmd, env=env)  # warm-up: numba's on-disk compile cache
            mk = mm = None
            for repeat in range(args.repeats):
                for out_dir in (mk_out, mm_out):
                    shutil.rmtree(out_dir, ignore_errors=True)
                # The order alternates: a command run right after the other tool's is measurably slower
                # here (about 0.4 s after mergekit's 2.7 GB run), so each tool gets both positions.
                if repeat % 2 == 0:
                    mk = _best(mk, measure(mk_cmd, env=env))
                    mm = _best(mm, measure(mm_cmd, env=env))
                else:
                    mm = _best(mm, measure(mm_cmd, env=env))
                    mk = _best(mk, measure(mk_cmd, env=env))
            report = json.loads((mm_out / "merge_report.json").read_text())
            row = {"method": method, "mergekit_wall_s": round(mk["wall_s"], 2), "mixmerge_wall_s": round(mm["wall_s"], 2),
                   "speedup": round(mk["wall_s"] / mm["wall_s"], 2),
                   "mergekit_cpu_s": round(mk["cpu_s"], 1), "mixmerge_cpu_s": round(mm["cpu_s"], 1),
                   "cpu_speedup": round(mk["cpu_s"] / mm["cpu_s"], 2), "mixmerge_merge_s": report["time_s"],
                   "mergekit_peak_rss_mb": round(mk["peak_rss_bytes"] / 2**20),
                   "mixmerge_peak_rss_mb": round(mm["peak_rss_bytes"] / 2**20),
                   }
            diff, n_diff = compare_outputs(mk_out, mm_out) if deterministic else (None, None)
            row["max_abs_diff"], row["n_entries_differing"] = diff, n_diff
            cold, warm, replan = in_memory_trial_s(base, models, method, params)
            row["in_memory_first_trial_s"], row["in_memory_reweight_trial_s"] = round(cold, 3), round(warm, 3)
            row["in_memory_new_density_trial_s"] = None if replan is None else round(replan, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(mk_out, ignore_errors=True)
            shutil.rmtree(mm_out, ignore_errors=True)
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("-" if r[c] is None else (f"{r[c]:.2e}" if c == "max_abs_diff" else str(r[c]))
                                for c in cols) + " |")
    print(f"\n(torch threads: {torch.get_num_threads()}; model: {SMOLLM2['name']}, float32)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
