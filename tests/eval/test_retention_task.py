"""The shipped retention task: deterministic items from CPython's reference prose, disjoint from training."""

from __future__ import annotations

import json

import pytest

from mixmerge.data.stdlib import DEFAULTS
from mixmerge.data.text import stable_hash
from mixmerge.eval.retention_task import (
    DATA_FILE,
    N_CHOICES,
    build_items,
    candidate_items,
    docstring_grams,
    overlaps,
    stdlib_docstrings,
)

TOPICS = {
    "alpha": "Alpha\n*****\n\nThe first sentence is about alpha things here. The second sentence continues the "
             "alpha story. The third sentence ends the alpha story well.\n\n   code_block = 1\n",
    "beta": "The beta topic opens with a long sentence here. Then beta goes on for quite a while longer now. Finally the beta "
            "paragraph stops right there.",
    "gamma": "Gamma begins with a sentence of some length. Gamma continues in a second sentence now. Gamma "
             "closes with one more sentence here.",
    "epsilon": "Epsilon starts its paragraph with these words. Epsilon follows with a middle sentence of its own. Epsilon "
               "ends with a final sentence at last.",
    "delta": "Delta starts its paragraph with these words. Delta follows with a middle sentence of its own. Delta ends with "
             "a final sentence at last.",
}


def test_items_are_next_sentence_choices_with_distractors_from_other_topics():
    items = build_items(TOPICS, n_items=5, per_topic=1, banned_grams=set())
    assert sorted(i["id"].split("/")[0] for i in items) == sorted(TOPICS)  # one per topic
    assert [i["id"] for i in items] == sorted((i["id"] for i in items), key=stable_hash)  # a prefix mixes topics
    for item in items:
        assert len(item["choices"]) == N_CHOICES and len(set(item["choices"])) == N_CHOICES
        topic = item["id"].split("/")[0]
        right = item["choices"][item["label"]]
        assert topic.capitalize() in right or topic in right  # the true next sentence is the topic's own
        assert sum(topic in c.lower() for c in item["choices"]) == 1  # distractors come from other topics
    assert build_items(TOPICS, n_items=5, per_topic=1, banned_grams=set()) == items  # deterministic
    assert not any("code_block" in c["context"] for c in candidate_items(TOPICS))  # code is not prose


def test_items_overlapping_training_docstrings_are_dropped():
    banned = docstring_grams(["Return x. Then beta goes on for quite a while longer now. Finally the beta paragraph stops"])
    assert overlaps("then beta goes on for quite a while longer", banned)
    kept = build_items(TOPICS, n_items=4, per_topic=2, banned_grams=banned)
    assert all(not i["id"].startswith("beta/") for i in kept)
    with pytest.raises(ValueError, match="only 4 items could be built"):
        build_items(TOPICS, n_items=5, per_topic=2, banned_grams=banned)


def test_shipped_file_is_well_formed_and_its_source_is_outside_the_training_walk():
    items = [json.loads(line) for line in DATA_FILE.read_text().splitlines()]
    assert len(items) == 150 and len({i["id"] for i in items}) == 150
    assert all(len(i["choices"]) == N_CHOICES and 0 <= i["label"] < N_CHOICES for i in items)
    assert "pydoc_data" in DEFAULTS["skip_dirs"]  # the stdlib training corpus never reads the source text
    assert {i["label"] for i in items} == set(range(N_CHOICES))
    assert len({i["id"].split("/")[0] for i in items[:40]}) >= 15  # the default limit's prefix spans topics


@pytest.mark.slow  # walks the whole stdlib (~30 s on 2 cores)
def test_shipped_items_share_no_8gram_with_any_stdlib_function_docstring():
    banned = docstring_grams(stdlib_docstrings())
    items = [json.loads(line) for line in DATA_FILE.read_text().splitlines()]
    clashes = [i["id"] for i in items if overlaps(f"{i['context']} {i['choices'][i['label']]}", banned)]
    assert clashes == []
