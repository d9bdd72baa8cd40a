from mixmerge.data.text import code_tokens, first_sentence, ngrams, normalise_summary, unit_interval


def test_first_sentence_takes_first_paragraph_and_sentence():
    doc = "Return the sum of\n   two numbers. Ignores NaN.\n\nMore text here."
    assert first_sentence(doc) == "Return the sum of two numbers."


def test_first_sentence_keeps_abbreviations_inside_words():
    assert first_sentence("Use e.g.the version 3.5 here") == "Use e.g.the version 3.5 here"


def test_normalise_summary_filters():
    assert normalise_summary("Add two numbers.", min_words=3, max_words=10) == "Add two numbers."
    assert normalise_summary("Add.", min_words=3, max_words=10) is None  # too short (2 tokens)
    assert normalise_summary("See https://x.org for details.", min_words=3, max_words=10) is None
    assert normalise_summary("Returns the following:\n\n  a list", min_words=2, max_words=10) is None
    assert normalise_summary("Gibt die Größe zurück.", min_words=3, max_words=10) is None  # non-ASCII
    assert normalise_summary(" ".join(["word"] * 11) + ".", min_words=3, max_words=10) is None


def test_code_tokens_and_ngrams_ignore_whitespace():
    a = code_tokens("return  x+1")
    b = code_tokens("return x + 1")
    assert a == b == ["return", "x", "+", "1"]
    assert ngrams(a, 3) == {("return", "x", "+"), ("x", "+", "1")}
    assert ngrams(a, 5) == set()


def test_unit_interval_is_fixed_and_in_range():
    values = [unit_interval(f"m{i}") for i in range(1000)]
    assert all(0 <= v < 1 for v in values)
    assert unit_interval("json.decoder") == unit_interval("json.decoder")
    assert 0.45 < sum(values) / len(values) < 0.55
