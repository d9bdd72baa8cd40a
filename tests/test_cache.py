"""The artifact store: hit/miss rules, atomicity under a crash, one build under concurrency."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mixmerge.cache import ArtifactStore, BrokenArtifactError, content_key
from mixmerge.stages import merge_config_for_key, training_config


def _writer(calls: list):
    def build(work: Path):
        calls.append(work)
        (work / "weights.bin").write_bytes(b"x" * 10)
        return {"note": "built"}

    return build


def test_second_request_is_a_hit_and_manifest_records_config(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    first = store.get_or_build("specialist", {"lr": 1e-4, "seed": 0}, _writer(calls), inputs={"base": "abc"})
    second = store.get_or_build("specialist", {"seed": 0, "lr": 1e-4}, _writer(calls), inputs={"base": "abc"})
    assert len(calls) == 1 and not first.reused and second.reused
    assert first.path == second.path and (first.path / "weights.bin").read_bytes() == b"x" * 10
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["config"] == {"lr": 1e-4, "seed": 0}
    assert manifest["inputs"] == {"base": "abc"} and manifest["note"] == "built"
    assert "torch" in manifest["versions"] and manifest["build_seconds"] >= 0


def test_refresh_rebuilds_and_replaces_the_artifact(tmp_path):
    """eval.cache=false: the artifact is built again and the new one replaces the old as a whole."""
    store, calls = ArtifactStore(tmp_path), []

    def build(work: Path):
        calls.append(work)
        (work / "out.txt").write_text(f"build {len(calls)}")

    first = store.get_or_build("eval", {"n": 1}, build)
    again = store.get_or_build("eval", {"n": 1}, build, refresh=True)
    assert len(calls) == 2 and not again.reused and again.path == first.path
    assert (again.path / "out.txt").read_text() == "build 2"
    assert store.get_or_build("eval", {"n": 1}, build).reused and len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "eval").iterdir() if not p.name.endswith(".lock")) == [first.path.name]


def test_eval_cache_key_ignores_settings_that_do_not_change_results():
    from mixmerge.eval.suite import eval_cache_config

    cfg = {"seed": 0, "humaneval": {"limit": 16}, "workers": 2, "cache": True, "samples": None, "bleu": {},
           "bootstrap": {"resamples": 2000}}
    # the format version: an evaluation cached before samples.json existed is not reused
    assert eval_cache_config(cfg) == {"seed": 0, "humaneval": {"limit": 16}, "_format": 2}
    assert content_key("eval", eval_cache_config({**cfg, "workers": 8, "cache": False})) == \
        content_key("eval", eval_cache_config(cfg))
    assert content_key("eval", eval_cache_config({**cfg, "seed": 1})) != content_key("eval", eval_cache_config(cfg))


@pytest.mark.parametrize("change", [{"lr": 2e-4}, {"seed": 1}, {"data": "other"}])
def test_what_matters_changes_the_key(change):
    config = {"lr": 1e-4, "seed": 0, "data": "d1"}
    assert content_key("specialist", config) != content_key("specialist", {**config, **change})


def test_inputs_and_kind_change_the_key():
    assert content_key("merged", {"m": 1}, {"base": "a"}) != content_key("merged", {"m": 1}, {"base": "b"})
    assert content_key("merged", {"m": 1}) != content_key("mixture", {"m": 1})


def test_what_does_not_matter_keeps_the_key():
    cfg = {
        "finetune": {"method": "full", "lr": 1e-4},
        "trainer": {"max_steps": 4, "precision": "32-true", "accelerator": "cpu", "log_every_n_steps": 1,
                    "enable_progress_bar": True, "num_threads": None},
        "seed": 0,
        "model": {"prompt_style": "completion", "dtype": "float32"},
        "logger": {"wandb": {"mode": "offline"}},
        "task": {"packing": True},
    }
    other = json.loads(json.dumps(cfg))
    other["logger"]["wandb"]["mode"] = "online"
    other["trainer"].update(log_every_n_steps=50, enable_progress_bar=False, num_threads=2)
    assert content_key("s", training_config(cfg)) == content_key("s", training_config(other))
    other["trainer"]["max_steps"] = 5
    assert content_key("s", training_config(cfg)) != content_key("s", training_config(other))
    merge = {"method": "ties", "weight": 0.5, "output": "/a", "base": "/b", "models": ["/c"]}
    assert merge_config_for_key(merge) == merge_config_for_key({**merge, "output": "/elsewhere"})
    from mixmerge.merge.registry import ALGORITHM_VERSION  # a new merge algorithm is a new artifact

    assert merge_config_for_key(merge)["algorithm_version"] == ALGORITHM_VERSION


def test_failed_build_leaves_nothing_that_counts(tmp_path):
    store = ArtifactStore(tmp_path)

    def crash(work: Path):
        (work / "half.bin").write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.get_or_build("merged", {"a": 1}, crash)
    key = content_key("merged", {"a": 1})
    assert store.lookup("merged", key) is None and not store.path_for("merged", key).exists()
    calls: list = []
    art = store.get_or_build("merged", {"a": 1}, _writer(calls))
    assert len(calls) == 1 and not (art.path / "half.bin").exists()


KILLED_BUILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from mixmerge.cache import ArtifactStore

    def build(work):
        (work / "half.bin").write_bytes(b"half")
        os._exit(9)  # the process dies mid-write, as under kill -9

    ArtifactStore(sys.argv[1]).get_or_build("merged", {"a": 1}, build)
    """
)


def test_killed_process_mid_write_is_rebuilt(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(tmp_path)], capture_output=True)
    assert proc.returncode == 9
    store = ArtifactStore(tmp_path)
    key = content_key("merged", {"a": 1})
    assert store.lookup("merged", key) is None  # the partial folder is not an artifact
    calls: list = []
    art = store.get_or_build("merged", {"a": 1}, _writer(calls))
    assert len(calls) == 1 and sorted(p.name for p in art.path.iterdir()) == ["manifest.json", "weights.bin"]


CONCURRENT_BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mixmerge.cache import ArtifactStore

    def build(work):
        with open(Path(sys.argv[1]) / "builds.log", "a") as f:
            f.write("build\\n")
        time.sleep(1.0)
        (work / "w.bin").write_bytes(b"w")

    art = ArtifactStore(Path(sys.argv[1]) / "cache").get_or_build("mixture", {"a": 1}, build)
    print(art.path)
    """
)


def test_two_processes_build_once(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_BUILD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    paths = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1
    assert (tmp_path / "builds.log").read_text().count("build") == 1


def test_resumable_build_sees_its_partial_work(tmp_path):
    store = ArtifactStore(tmp_path)
    seen = []

    def first(work: Path):
        (work / "checkpoint").write_text("step 3")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.get_or_build("specialist", {"a": 1}, first, resumable=True)

    def second(work: Path):
        seen.append((work / "checkpoint").read_text())

    store.get_or_build("specialist", {"a": 1}, second, resumable=True)
    assert seen == ["step 3"]


def _safetensors_writer(calls: list):
    def build(work: Path):
        import torch
        from safetensors.torch import save_file

        calls.append(work)
        save_file({"w": torch.arange(64, dtype=torch.float32)}, str(work / "model.safetensors"))
        (work / "config.json").write_text('{"a": 1}')

    return build


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda p: (p / "manifest.json").write_text('{"kind": "merged", "key'), r"manifest\.json cannot be read"),
    (lambda p: (p / "manifest.json").write_text("[]"), r"manifest\.json is not a JSON object"),
    (lambda p: _truncate(p / "model.safetensors", 200), r"model\.safetensors"),
    (lambda p: _truncate(p / "model.safetensors", 4), r"model\.safetensors has 4 bytes, \d+ when it was built"),
    (lambda p: (p / "config.json").unlink(), r"config\.json is missing"),
    (lambda p: (p / "config.json").write_text("{}"), r"config\.json has 2 bytes, 8 when it was built"),
])
def test_a_damaged_artifact_fails_naming_its_folder_and_the_fix(tmp_path, damage, problem):
    store, calls = ArtifactStore(tmp_path), []
    art = store.get_or_build("merged", {"a": 1}, _safetensors_writer(calls))
    assert art.manifest["files"]["config.json"] == {"bytes": 8}
    assert art.manifest["files"]["model.safetensors"]["bytes"] == (art.path / "model.safetensors").stat().st_size
    damage(art.path)
    with pytest.raises(BrokenArtifactError, match=problem) as err:
        store.get_or_build("merged", {"a": 1}, _safetensors_writer(calls))
    assert str(art.path) in str(err.value) and "cache.rebuild_broken=true" in str(err.value)
    assert f"rm -rf {art.path}" in str(err.value) and len(calls) == 1  # nothing was built or removed
    assert art.path.is_dir()


def test_rebuild_broken_replaces_the_damaged_artifact(tmp_path):
    calls: list = []
    art = ArtifactStore(tmp_path).get_or_build("merged", {"a": 1}, _safetensors_writer(calls))
    good = (art.path / "model.safetensors").read_bytes()
    _truncate(art.path / "model.safetensors", 200)
    store = ArtifactStore(tmp_path, rebuild_broken=True)
    again = store.get_or_build("merged", {"a": 1}, _safetensors_writer(calls))
    assert len(calls) == 2 and not again.reused and again.path == art.path
    assert (again.path / "model.safetensors").read_bytes() == good
    assert store.get_or_build("merged", {"a": 1}, _safetensors_writer(calls)).reused and len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "merged").iterdir() if not p.name.endswith(".lock")) == [art.path.name]


def test_a_failed_rebuild_keeps_the_damaged_artifact_for_inspection(tmp_path):
    art = ArtifactStore(tmp_path).get_or_build("merged", {"a": 1}, _safetensors_writer([]))
    (art.path / "config.json").write_text("{}")

    def crash(work: Path):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ArtifactStore(tmp_path, rebuild_broken=True).get_or_build("merged", {"a": 1}, crash)
    assert (art.path / "config.json").read_text() == "{}" and (art.path / "model.safetensors").is_file()


def test_manifests_without_recorded_sizes_stay_usable_and_truncation_is_still_caught(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    art = store.get_or_build("merged", {"a": 1}, _safetensors_writer(calls))
    manifest = json.loads((art.path / "manifest.json").read_text())
    del manifest["files"]  # as written before sizes were recorded
    (art.path / "manifest.json").write_text(json.dumps(manifest))
    assert store.get_or_build("merged", {"a": 1}, _safetensors_writer(calls)).reused and len(calls) == 1
    _truncate(art.path / "model.safetensors", 300)
    with pytest.raises(BrokenArtifactError, match=r"model\.safetensors is truncated: its tensors need \d+ bytes"):
        store.get_or_build("merged", {"a": 1}, _safetensors_writer(calls))


def test_a_manifest_of_another_artifact_is_refused(tmp_path):
    store = ArtifactStore(tmp_path)
    art = store.get_or_build("merged", {"a": 1}, _writer([]))
    manifest = json.loads((art.path / "manifest.json").read_text())
    (art.path / "manifest.json").write_text(json.dumps({**manifest, "key": "0" * 20}))
    with pytest.raises(BrokenArtifactError, match="expected '" + art.key):
        store.lookup("merged", art.key)
