"""Evaluation: code generation by executed tests, summarization by BLEU, held-out loss as a proxy.

The lead calls :func:`evaluate_model` per variant and :func:`aggregate` for the one-number score;
``mixmerge.eval.score.run`` scores other tools' files (``strategy=score``).
"""

from mixmerge.eval.aggregate import aggregate
from mixmerge.eval.metrics import pass_at_k, smoothed_bleu4
from mixmerge.eval.sandbox import Result, run_programs
from mixmerge.eval.suite import describe_subsets, evaluate_model

__all__ = ["Result", "aggregate", "describe_subsets", "evaluate_model", "pass_at_k", "run_programs", "smoothed_bleu4"]
