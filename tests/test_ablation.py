"""ablation.py and plot_curves.py on a tiny study: 2 configurations x 2 seeds of the demo data,
2 epochs of a width-8 model, 2 runs at a time (main.py subprocesses)."""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

import ablation
from studies import configs, folder, jobs, report
import plot_curves

CONFIGS = ["baseline", "adaptive_smart_curriculum"]
SEEDS = 2
TRAIN_FLAGS = ["--demo_users", "200", "--demo_items", "150", "--maxlen", "10",
               "--hidden_units", "8", "--num_epochs", "1", "--batch_size", "64"]


def study_argv(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--seeds", str(SEEDS), "--configs", *CONFIGS, "--jobs", "2",
            *extra, "--", *TRAIN_FLAGS]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("study")
    result = ablation.main(study_argv(out))
    assert result["failed"] == [], (out / "study.log").read_text()
    return out, result


def run_metrics(out: Path, config: str) -> list[dict]:
    return [json.loads((folder.run_dir(out, config, s) / "log" / "metrics.json").read_text())
            for s in range(SEEDS)]


def attempts(out: Path, config: str, seed: int) -> int:
    path = folder.run_dir(out, config, seed) / "run.json"
    return len(json.loads(path.read_text())["attempts"])


def test_results_are_mean_and_std_of_the_runs(study):
    out, result = study
    with open(out / "results.csv") as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    assert list(rows) == CONFIGS
    for config in CONFIGS:
        runs, row = run_metrics(out, config), rows[config]
        assert row["seeds_finished"] == str(SEEDS)
        for key in ("HR@10", "NDCG@10", "MRR", "AUC", "score"):
            values = [m["test"][key] for m in runs]
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.fmean(values))
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values))
        per_epoch = [statistics.fmean(h["seconds"] for h in m["history"]) for m in runs]
        assert float(row["seconds_per_epoch_mean"]) == pytest.approx(statistics.fmean(per_epoch))
        assert float(row["best_epoch_mean"]) == statistics.fmean(m["best_epoch"] for m in runs)
    base, other = rows["baseline"], rows["adaptive_smart_curriculum"]
    delta = float(other["NDCG@10_mean"]) - float(base["NDCG@10_mean"])
    assert float(other["delta_NDCG@10"]) == pytest.approx(delta)
    bound = 2 * max(float(other["NDCG@10_std"]), float(base["NDCG@10_std"]))
    expected = configs.VERDICT_NONE if abs(delta) <= bound else ("better" if delta > 0 else "worse")
    assert other["verdict_NDCG@10"].startswith(expected)
    assert base["verdict_NDCG@10"] == "reference"

    md = (out / "results.md").read_text()
    for config in CONFIGS:
        assert f"| {config} | {SEEDS}/{SEEDS} |" in md
    assert f"{statistics.fmean(m['test']['NDCG@10'] for m in run_metrics(out, 'baseline')):.4f}" in md
    assert configs.VERDICT_NONE in md and "budget:" in md
    assert not (out / "hparams").exists()  # each run carries its own HParams entry instead
    for config in CONFIGS:
        for seed in range(SEEDS):
            acc = EventAccumulator(str(out / "runs" / config / f"seed{seed}" / "tb"))
            acc.Reload()
            start = metadata.parse_session_start_info_plugin_data(
                acc.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG])
            assert start.hparams["seed"].number_value == seed


def test_each_run_got_its_own_folders_and_flags(study):
    out, _ = study
    for config in CONFIGS:
        for seed in range(SEEDS):
            args = json.loads((folder.run_dir(out, config, seed) / "log" / "args.json").read_text())
            assert args["seed"] == seed and args["eval_protocol"] == "leave_one_out"
            assert args["cache_dir"] == str(out / "cache") and args["maxlen"] == 10
            assert args["use_smart_sampling"] == args["use_adaptive_similarity"] == (config != "baseline")
            assert args["popular_ratio_schedule"] == ("linear" if config != "baseline" else "constant")
    assert (out / "cache" / "demo_u200_i150" / "seq.jsonl").exists()


def test_report_only_rewrites_the_same_report_without_training(study):
    out, _ = study
    before = (out / "results.md").read_text()
    (out / "results.md").unlink()
    (out / "results.csv").unlink()
    ablation.main(["--out", str(out), "--report_only"])
    assert (out / "results.md").read_text() == before
    assert (out / "results.csv").exists()
    assert all(attempts(out, c, s) == 1 for c in CONFIGS for s in range(SEEDS))


def test_plot_curves(study):
    pytest.importorskip("matplotlib")
    out, _ = study
    data = plot_curves.curves(out)
    histories = [m["history"] for m in run_metrics(out, "baseline")]
    assert data["baseline"]["epochs"] == [1]
    assert data["baseline"]["mean"][0] == pytest.approx(
        statistics.fmean(h[0]["valid_NDCG@10"] for h in histories))
    png = plot_curves.main(["--study", str(out), "--out", str(out / "valid_ndcg.png")])
    assert png.stat().st_size > 1000


def test_second_call_skips_finished_runs(study):
    out, _ = study
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/seed*/log/metrics.json")}
    assert len(stamps) == len(CONFIGS) * SEEDS
    result = ablation.main(study_argv(out))
    assert result["failed"] == []
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert all(attempts(out, c, s) == 1 for c in CONFIGS for s in range(SEEDS))
    assert "skip  baseline_seed0" in (out / "study.log").read_text()
    assert len(json.loads((out / "study.json").read_text())["invocations"]) == 2


def test_an_interrupted_run_resumes(study, tmp_path):
    """Checkpoints but no metrics.json: the run is started again with --resume (main.py's
    resume itself is tested with main.py; a subprocess here would cost seconds)."""
    out, _ = study
    done = folder.Run("baseline", 0, folder.run_dir(out, "baseline", 0))
    fresh = folder.Run("baseline", 5, tmp_path / "fresh")
    args = ablation.parse_args(study_argv(out))
    assert jobs.has_checkpoint(done) and not jobs.has_checkpoint(fresh)
    cmd = jobs.run_command(done, args, resume=jobs.has_checkpoint(done))
    assert cmd[-1] == "--resume" and cmd[cmd.index("--seed") + 1] == "0"
    assert "--resume" not in jobs.run_command(fresh, args, resume=False)


@pytest.mark.parametrize("flags, message", [
    (["--seed", "3"], "--seed"),
    (["--see", "3"], "--seed"),  # argparse abbreviation of a reserved flag
    (["--use_smart_sampling"], "a configuration sets it"),
    (["--num_epochs", "x"], "main.py rejects"),
])
def test_rejects_flags_that_would_break_the_comparison(tmp_path, flags, message):
    with pytest.raises(ablation.StudyError, match=message):
        ablation.main(["--out", str(tmp_path), "--configs", "baseline", "--", *flags])


def test_a_study_folder_keeps_its_training_flags(study, tmp_path):
    out, _ = study
    with pytest.raises(ablation.StudyError, match="train_flags"):
        ablation.main(["--out", str(out), "--configs", "baseline", "--", "--maxlen", "12"])


def test_verdict_wording():
    rows = [{"config": "baseline", "seeds_finished": 3, "NDCG@10_mean": 0.10, "NDCG@10_std": 0.01,
             "HR@10_mean": 0.20, "HR@10_std": 0.01},
            {"config": "x", "seeds_finished": 3, "NDCG@10_mean": 0.115, "NDCG@10_std": 0.005,
             "HR@10_mean": 0.25, "HR@10_std": 0.01},
            {"config": "y", "seeds_finished": 1, "NDCG@10_mean": 0.5, "NDCG@10_std": math.nan,
             "HR@10_mean": 0.5, "HR@10_std": math.nan}]
    report.add_comparison(rows)
    assert rows[1]["verdict_NDCG@10"] == "no measurable difference"  # 0.015 <= 2 * 0.01
    assert rows[1]["verdict_HR@10"] == "better (> 2 std)"  # 0.05 > 2 * 0.01
    assert rows[1]["delta_HR@10"] == pytest.approx(0.05)
    assert rows[2]["verdict_NDCG@10"].startswith("n/a")
