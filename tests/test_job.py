"""The end of a multirun says where the sweep-level verdict is: the strategy=report command for that sweep."""

from __future__ import annotations

from omegaconf import OmegaConf

from mixmerge.job import SweepVerdictHint, sweep_hint


def test_hint_counts_the_jobs_and_gives_the_report_command(tmp_path):
    sweep = tmp_path / "multi run"
    for job in ("0", "1"):
        (sweep / job).mkdir(parents=True)
        (sweep / job / "metrics.json").write_text("{}")
    lines = sweep_hint(sweep).splitlines()
    assert lines[0].startswith(f"Sweep finished: 2 jobs with metrics.json under {sweep}.")
    assert "compares that job's merge only with the mixture" in lines[0]
    assert lines[-1] == f"  python run.py strategy=report strategy.sweep_dir='{sweep}'"  # quoted: a space
    (sweep / "report").mkdir()
    (sweep / "report" / "report.md").write_text("# Sweep report\n")
    assert sweep_hint(sweep).splitlines()[-1] == f"(The sweeper's table and plots are already in {sweep / 'report'}.)"


def test_callback_prints_the_hint_for_the_configs_sweep_dir(tmp_path, capsys):
    SweepVerdictHint().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    out = capsys.readouterr().out
    assert "Sweep finished: 0 jobs" in out and f"strategy.sweep_dir={tmp_path}" in out
