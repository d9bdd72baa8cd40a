import pytest

from mixmerge.data import Example, load_task_splits, load_tasks
from mixmerge.data.tasks import cap, check_disjoint


def test_load_tasks_caps_and_keys(stdlib_tasks):
    assert set(stdlib_tasks) == {"codegen", "codesum"}
    for name, ts in stdlib_tasks.items():
        assert ts.counts() == {"train": 120, "valid": 40, "test": 40}
        assert ts.info["available"]["train"] > 500
        assert all(ex.task == name for ex in ts.train + ts.valid + ts.test)
        assert len(ts.key) == 20
    assert stdlib_tasks["codegen"].key != stdlib_tasks["codesum"].key


def test_same_seed_same_examples_other_seed_other_subset(store, stdlib_tasks, mixture_cfg):
    again = load_tasks(mixture_cfg, store=store, seed=0)
    assert again["codegen"].train == stdlib_tasks["codegen"].train
    assert again["codegen"].key == stdlib_tasks["codegen"].key
    other = load_tasks(mixture_cfg, store=store, seed=1)
    assert other["codegen"].key != stdlib_tasks["codegen"].key
    overlap = {e.id for e in other["codegen"].train} & {e.id for e in stdlib_tasks["codegen"].train}
    assert len(overlap) < 120


def test_single_task_config_matches_the_mixture_config(store, stdlib_tasks):
    solo = load_task_splits("codegen", {"source": "stdlib"}, store=store, seed=0,
                            limits={"max_train_examples": 120, "max_eval_examples": 40})
    assert solo.train == stdlib_tasks["codegen"].train and solo.key == stdlib_tasks["codegen"].key


def test_cap_is_a_seeded_subset():
    exs = [Example("p", "t", "codegen", str(i)) for i in range(50)]
    assert len(cap(exs, 10, seed=0)) == 10
    assert cap(exs, 10, seed=0) == cap(list(reversed(exs)), 10, seed=0)  # input order does not matter
    assert cap(exs, 10, seed=0) != cap(exs, 10, seed=1)
    assert sorted(e.id for e in cap(exs, None, seed=0)) == sorted(e.id for e in exs)


def test_disjointness_is_enforced():
    a = Example("def f():\n", "    pass\n", "codegen", "stdlib:m:f:abc")
    b = Example("def g():\n    pass\n", "Do nothing.", "codesum", "stdlib:m:g:abc")
    from mixmerge.data.tasks import TaskSplits

    with pytest.raises(ValueError, match="share an example"):
        check_disjoint({"codegen": TaskSplits("codegen", [a], [], [], "k1"),
                        "codesum": TaskSplits("codesum", [b], [], [], "k2")})


def test_config_errors_name_the_field(store):
    with pytest.raises(ValueError, match="task.tasks is empty"):
        load_tasks({"tasks": {}}, store=store, seed=0)
    with pytest.raises(ValueError, match=r"task.tasks.codegen.source='ftp'"):
        load_tasks({"tasks": {"codegen": {"source": "ftp"}}}, store=store, seed=0)
    with pytest.raises(ValueError, match="codegen_share"):
        load_tasks({"tasks": {"codegen": {"source": "stdlib", "codegen_share": 0.5},
                              "codesum": {"source": "stdlib", "codegen_share": 0.3}}}, store=store, seed=0)
    with pytest.raises(ValueError, match="source=stdlib builds only"):
        load_task_splits("repair", {"source": "stdlib"}, store=store, seed=0, limits={})
