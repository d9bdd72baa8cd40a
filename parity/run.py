"""``make parity``: every case of ``cases.CASES`` merged by mergekit 0.1.5 (its ``mergekit-yaml``, in
``.venv-parity``) and by mixmerge (``merge.from_mergekit`` on the same YAML, in this process), compared
tensor by tensor (``classify.py``); prints the table, writes it as markdown, exits 1 on any MISMATCH.

    PYTHONPATH=src .venv/bin/python -m parity.run [--only SUBSTRING] [--out outputs/parity]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from parity.cases import CASES, Case
from parity.classify import MISMATCH, SKIPPED, Outcome, Verdict, classify, cut_ties, variance_cut_ties

ROOT = Path(__file__).resolve().parents[1]


def _substitute(value, paths: dict[str, Path]):
    """The YAML with every placeholder string (``BASE``, ``M1``, ``BASE+ADAPTER`` ...) replaced by its folder."""
    if isinstance(value, dict):
        return {k: _substitute(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, paths) for v in value]
    if isinstance(value, str) and all(part in paths for part in value.split("+")):
        return "+".join(str(paths[part]) for part in value.split("+"))
    return value


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def mixmerge_knows(method: str) -> bool:
    from mixmerge.merge.registry import METHODS

    return method in METHODS


def run_mixmerge(config: Path, out: Path) -> Outcome:
    from mixmerge.merge.standalone import run

    try:
        run({"from_mergekit": str(config), "output": str(out)})
    except (ValueError, FileNotFoundError, NotImplementedError) as exc:
        return Outcome(error=f"{type(exc).__name__}: {exc}")
    return Outcome(tensors=load_tensors(out))


def tie_finder(config: Path):
    """For a magnitude-trimmed method (TIES, breadcrumbs): tensor name -> positions where some model's
    |task vector| ties at its cut (for SCE: where the task vectors' variance ties at its top-k cut), in float32 and in the inputs' or ``dtype``'s precision (mergekit's
    compute dtype); None for other methods. Densities per tensor come from mixmerge's reading of the YAML."""
    from mixmerge.merge.config_group import standalone_request

    try:
        req = standalone_request({"from_mergekit": str(config), "output": str(config.with_suffix(".unused"))})
    except ValueError:
        return None
    sparsify = "variance" if req.params.method.kind == "sce" else req.params.method.sparsify
    if sparsify not in ("magnitude", "breadcrumbs", "variance") or req.base is None:
        return None
    base = load_tensors(req.base)
    models = [load_tensors(m) for m in req.models]
    n_layers = int(json.loads((req.base / "config.json").read_text())["num_hidden_layers"])

    def ties(name: str) -> torch.Tensor:
        tp = req.params.for_tensor(name, n_layers)
        dtypes = {torch.float32, base[name].dtype, *([getattr(torch, req.params.dtype)] if req.params.dtype else [])}
        mask = torch.zeros(base[name].shape, dtype=torch.bool)
        for dt in dtypes:
            deltas = [m[name].to(dt) - base[name].to(dt) for m in models]
            mask |= (variance_cut_ties(deltas, float(tp.options["select_topk"].at(name, n_layers)))
                     if sparsify == "variance" else cut_ties(deltas, sparsify, list(tp.densities), list(tp.gammas)))
        return mask

    return ties


def run_mergekit(python: Path, jobs: list[dict], work: Path) -> list[dict]:
    jobs_file, results_file = work / "mergekit_jobs.json", work / "mergekit_results.json"
    jobs_file.write_text(json.dumps(jobs))
    subprocess.run([str(python), str(ROOT / "parity" / "mergekit_driver.py"), str(jobs_file), str(results_file)],
                   check=True, cwd=work)
    return json.loads(results_file.read_text())


def table(rows: list[tuple[Case, Verdict]]) -> str:
    lines = ["| case | arch | inputs | verdict | detail |", "|---|---|---|---|---|"]
    for case, v in rows:
        label = f"**{v.label}**" if v.label == MISMATCH else v.label
        lines.append(f"| {case.name} | {case.arch} | {case.dtype} | {label} | {v.detail.replace('|', '/')} |")
    return "\n".join(lines)


def summary(rows: list[tuple[Case, Verdict]]) -> str:
    counts: dict[str, int] = {}
    for _, v in rows:
        counts[v.label] = counts.get(v.label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "parity")
    ap.add_argument("--mergekit-python", type=Path, default=ROOT / ".venv-parity" / "bin" / "python")
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the models and merges an earlier run left in OUT/work (to re-judge, not re-merge)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cases = [c for c in CASES if args.only in c.name]
    work = args.out / "work"
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    models = {key: _build(work / f"{key[0]}-{key[1]}", *key) for key in sorted({(c.arch, c.dtype) for c in cases})}

    runnable, verdicts, jobs = [], {}, []
    for i, case in enumerate(cases):
        if not mixmerge_knows(case.method) and _mergekit_knows(case.method):
            verdicts[i] = Verdict(SKIPPED, f"mixmerge has no method {case.method!r} yet")
            continue
        config = work / f"case{i:03d}.yml"
        config.write_text(yaml.safe_dump(_substitute(case.doc, models[(case.arch, case.dtype)]), sort_keys=False))
        runnable.append(i)
        jobs.append({"config": str(config), "out": str(work / f"case{i:03d}-mergekit"),
                     "lora_cache": str(work / "lora-merge-cache")})
    t_mk = time.perf_counter()
    todo = [j for j in jobs if not list(Path(j["out"]).glob("*.safetensors"))]  # all of them unless --reuse
    done = dict(zip((j["out"] for j in todo), run_mergekit(args.mergekit_python, todo, work), strict=True)) \
        if todo else {}
    mk_results = [done.get(j["out"], {"ok": True, "error": None}) for j in jobs]
    t_mk = time.perf_counter() - t_mk
    t_mx = 0.0
    for i, job, res in zip(runnable, jobs, mk_results, strict=True):
        case = cases[i]
        mk = Outcome(tensors=load_tensors(Path(job["out"]))) if res["ok"] else Outcome(error=res["error"])
        t = time.perf_counter()
        mx_out = work / f"case{i:03d}-mixmerge"
        mx = Outcome(tensors=load_tensors(mx_out)) if list(mx_out.glob("*.safetensors")) \
            else run_mixmerge(Path(job["config"]), mx_out)
        t_mx += time.perf_counter() - t
        folders = models[(case.arch, case.dtype)]
        base = load_tensors(folders["BASE"])
        inputs = [load_tensors(folders[m]) for m in ("M1", "M2", "M3")]
        ties = None if case.random else tie_finder(Path(job["config"]))
        verdicts[i] = classify(mk, mx, random=case.random, base=base, ties=ties, inputs=inputs)
        print(f"{case.name:55s} {verdicts[i].label:26s} {verdicts[i].detail}", flush=True)

    # the refusals quote paths: shorter relative to the work folder
    rows = [(c, Verdict(verdicts[i].label, verdicts[i].detail.replace(f"{work}/", ""))) for i, c in enumerate(cases)]
    wall = time.perf_counter() - t0
    header = (f"{datetime.date.today().isoformat()}, mergekit {metadata.version('mergekit') if _has_mergekit_meta() else '0.1.5'}"
              f", torch {torch.__version__}, {machine()}; "
              f"{len(cases)} cases in {wall:.0f} s (mergekit {t_mk:.0f} s, mixmerge {t_mx:.0f} s): {summary(rows)}")
    md = f"{header}\n\n{table(rows)}\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parity.md").write_text(md)
    print("\n" + md)
    print(f"written: {args.out / 'parity.md'}")
    return 1 if any(v.label == MISMATCH for _, v in rows) else 0


def machine() -> str:
    """The CPU model and core count (Linux: /proc/cpuinfo), for the table's header."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores"


def _build(folder: Path, arch: str, dtype: str) -> dict[str, Path]:
    from parity.models import build_models

    if (folder / "m3").is_dir():  # --reuse: built by an earlier run
        return {p: folder / p.lower() for p in ("BASE", "M1", "M2", "M3", "ADAPTER")
                if (folder / p.lower()).is_dir()}
    return build_models(folder, arch, dtype)


def _mergekit_knows(method: str) -> bool:
    return True  # every method of the case list is one of mergekit 0.1.5's


def _has_mergekit_meta() -> bool:
    try:
        metadata.version("mergekit")
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(main())
