"""What a new user meets: the end-of-run summary, resuming an interrupted default run (the printed
command and `--resume` alone), --keep_checkpoints, the HParams entry and legend, log lines above
the progress bar, and a missing --data_dir.

Runs are in-process `main.cli()` / `main.main()` calls on the tiny demo data, in a tmp working
directory so the default `runs/` folder is the test's own. An interruption is a KeyboardInterrupt
raised from the checkpoint save of a chosen epoch, after the checkpoint is complete.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from run_files import checkpoint
import main as main_mod
from training import flags as train_flags, setup, validation as train_validation
from run_files import run_folders
from run_files import tb_meta
from conftest import DEMO_ITEMS, DEMO_USERS

TINY = ["--demo_users", str(DEMO_USERS), "--demo_items", str(DEMO_ITEMS), "--maxlen", "20",
        "--hidden_units", "16", "--batch_size", "64", "--device", "cpu"]
STEPS = -(-DEMO_USERS // 64)  # the demo defaults to leave_one_out: every user trains


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, demo_cache):
    """cwd = tmp_path (so runs/ is the test's), and the flags of a tiny demo run."""
    monkeypatch.chdir(tmp_path)
    return [*TINY, "--cache_dir", str(demo_cache)]


def _interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C right after the checkpoint of `epoch` is written."""
    real = checkpoint.save_checkpoint

    def save(ckpt_dir, state, config):
        path = real(ckpt_dir, state, config)
        if config["epoch"] == epoch:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)


def _summary_metrics(stdout: str) -> dict[str, dict[str, float]]:
    """The metrics table of the printed summary -> {split: {column: value}}."""
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("split "))
    cols = lines[head].split()[3:]
    rows = {}
    for line in lines[head + 1:head + 3]:
        split, _, _, *values = line.split()
        rows[split] = dict(zip(cols, map(float, values)))
    return rows


def test_summary_names_existing_best_checkpoint_and_prints_metrics_json(in_tmp, capsys):
    result = main_mod.main([*in_tmp, "--num_epochs", "2", "--run_name", "first"])
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "tensorboard --logdir runs"
    best = re.search(r"best checkpoint: (\S+) \(epoch (\d+), valid NDCG@10 ([0-9.]+)\)", out)
    assert best, out
    assert (checkpoint.resolve(best.group(1))).is_file()
    metrics = json.loads(open("runs/first/log/metrics.json").read())
    assert best.group(1) == metrics["best_checkpoint"] and int(best.group(2)) == metrics["best_epoch"]
    printed = _summary_metrics(out)
    for split in ("valid", "test"):
        for col, value in printed[split].items():
            assert value == pytest.approx(metrics[split][col], abs=5e-5), (split, col)
    assert result["test"] == metrics["test"]
    log_text = open("runs/first/log/train.log").read()
    assert log_text.rstrip().endswith("tensorboard --logdir runs")
    assert "best checkpoint: " + best.group(1) in log_text
    assert run_folders.is_finished("runs/first/log")


def test_summary_with_explicit_tb_dir_and_random_user(in_tmp, capsys, tmp_path):
    main_mod.main([*in_tmp, "--num_epochs", "2", "--eval_protocol", "random_user",
                   "--log_dir", "A", "--tb_dir", "B", "--ckpt_dir", "C"])
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "tensorboard --logdir B"
    assert "no ranking metrics with --eval_protocol random_user" in out
    # without rankings the best checkpoint is the lowest validation loss
    summary = json.loads((tmp_path / "A" / "summary.json").read_text())
    assert summary["best_by"] == "valid loss" and summary["best_checkpoint"].startswith("C")
    assert (tmp_path / summary["best_checkpoint"] / "model.pt").is_file()


def test_demo_defaults_to_ranking_and_real_data_to_the_baseline_split(tmp_path):
    assert train_flags.parse_args([]).eval_protocol == "leave_one_out"
    assert train_flags.parse_args(["--data_dir", str(tmp_path)]).eval_protocol == "random_user"


def test_interrupted_default_run_continues_with_printed_command_and_with_resume_alone(
        in_tmp, monkeypatch, capsys):
    real_save = checkpoint.save_checkpoint
    _interrupt_after_epoch(monkeypatch, 1)
    monkeypatch.setattr(sys, "argv", ["main.py", *in_tmp, "--num_epochs", "3"])
    assert main_mod.cli() == 130
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    assert hint.startswith("interrupted: continue this run with: python main.py ")
    (run,) = [p.name for p in Path("runs").iterdir()]
    assert run.startswith("demo-")
    command = shlex.split(hint.split(": ", 2)[2])
    assert command[command.index("--run_name") + 1] == run and "--resume" in command
    # --resume takes the run's own flags (args.json) for those not given again
    again = train_flags.parse_args(["--run_name", run, "--resume", "--lr", "0.01"])
    assert (again.num_epochs, again.maxlen, again.lr) == (3, 20, 0.01)

    _interrupt_after_epoch(monkeypatch, 2)  # the printed command continues epoch 2, stopped again
    with pytest.raises(KeyboardInterrupt):
        main_mod.main(command[2:])
    latest = checkpoint.latest_checkpoint(f"runs/{run}/ckpt")
    assert latest.name == checkpoint.checkpoint_name(2, 2 * STEPS)

    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    result = main_mod.main(["--resume"])  # alone: that run, with its own flags (3 epochs, tiny)
    assert result["epoch"] == 3 and result["global_step"] == 3 * STEPS
    assert [p.name for p in Path("runs").iterdir()] == [run]
    valid = EventAccumulator(f"runs/{run}")
    valid.Reload()
    steps = [e.step for e in valid.Scalars("Loss/valid")]
    assert steps == [0, STEPS, 2 * STEPS, 3 * STEPS]  # each epoch trained once
    assert run_folders.is_finished(f"runs/{run}/log")
    assert run_folders.latest_unfinished_run() is None  # finished: nothing left to continue


def test_keep_checkpoints_keeps_best_and_last_two_and_resume_works(in_tmp, monkeypatch):
    # Best by valid NDCG@10 = epoch 1: every later ranking is made worse.
    real_eval = train_validation.run_evaluation
    rankings = iter([0.5, 0.1, 0.2, 0.3, 0.4])

    def evaluation(model, data, queries, args, device, amp_dtype):
        metrics = real_eval(model, data, queries, args, device, amp_dtype)
        return {**metrics, "NDCG@10": next(rankings, metrics["NDCG@10"])}

    monkeypatch.setattr(train_validation, "run_evaluation", evaluation)
    argv = [*in_tmp, "--run_name", "kept", "--num_epochs", "5", "--keep_checkpoints", "2"]
    result = main_mod.main(argv)
    kept = [p.name for p in checkpoint.complete_checkpoints("runs/kept/ckpt")]
    assert kept == [checkpoint.checkpoint_name(e, e * STEPS) for e in (1, 4, 5)]
    assert result["best_epoch"] == 1
    assert sorted(p.name for p in Path("runs/kept/ckpt").iterdir()) == kept  # nothing else left

    monkeypatch.setattr(train_validation, "run_evaluation", real_eval)
    resumed = main_mod.main([*argv[:-4], "--num_epochs", "6", "--keep_checkpoints", "2", "--resume"])
    assert resumed["epoch"] == 6 and resumed["global_step"] == 6 * STEPS
    kept = [p.name for p in checkpoint.complete_checkpoints("runs/kept/ckpt")]
    assert checkpoint.checkpoint_name(6, 6 * STEPS) in kept and len(kept) == 3


def test_prune_checkpoints_against_a_listing(tmp_path):
    for epoch in range(1, 6):
        checkpoint.save_checkpoint(tmp_path, {"w": 0}, {"epoch": epoch, "global_step": 10 * epoch})
    names = [checkpoint.checkpoint_name(e, 10 * e) for e in range(1, 6)]
    assert checkpoint.prune_checkpoints(tmp_path, 0) == []
    deleted = checkpoint.prune_checkpoints(tmp_path, 2, keep=(names[1],))
    assert sorted(p.name for p in deleted) == [names[0], names[2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [names[1], names[3], names[4]]


def test_continue_command_drops_state_dict_path_once_a_checkpoint_exists():
    argv = ["--num_epochs", "5", "--state_dict_path", "old/ckpt/epoch001", "--lr", "0.01"]
    assert run_folders.continue_command(argv, "r1", True) == (
        "python main.py --num_epochs 5 --lr 0.01 --run_name r1 --resume")
    assert run_folders.continue_command(argv, "r1", False) == (
        "python main.py --num_epochs 5 --state_dict_path old/ckpt/epoch001 --lr 0.01 --run_name r1")
    assert run_folders.continue_command(["--run_name", "x y"], "x y", True) == (
        "python main.py --run_name 'x y' --resume")


def test_hparams_entry_and_legend_in_the_runs_own_events(in_tmp):
    main_mod.main([*in_tmp, "--num_epochs", "1", "--run_name", "tb", "--use_adaptive_similarity",
                   "--similarity_types", "dot", "cosine", "bilinear"])
    acc = EventAccumulator("runs/tb")
    acc.Reload()
    plugin = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info",
            "_hparams_/session_end_info"} <= set(plugin)
    from tensorboard.plugins.hparams import metadata
    experiment = metadata.parse_experiment_plugin_data(plugin["_hparams_/experiment"])
    # TensorBoard shows the `differs` columns (at most five) until the user picks others
    shown = {h.name for h in experiment.hparam_infos if h.differs}
    assert shown == {"data", "eval_protocol", "loss", "options", "seed"}
    assert {"use_adaptive_similarity", "similarity_types"} <= {h.name for h in experiment.hparam_infos}
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert metric_tags <= set(acc.Tags()["scalars"])  # every metric column has its curve
    start = metadata.parse_session_start_info_plugin_data(plugin["_hparams_/session_start_info"])
    assert start.hparams["seed"].number_value == 42
    assert start.hparams["similarity_types"].string_value == "dot cosine bilinear"
    assert "--use_adaptive_similarity --similarity_types dot cosine bilinear" in (
        start.hparams["options"].string_value)
    assert start.hparams["loss"].string_value.startswith("bce")  # the default objective
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("hparam")]  # no one-point cards
    legend = tb_meta.legend(train_flags.parse_args(["--use_adaptive_similarity",
                                                 "--similarity_types", "dot", "bilinear"]))
    assert "Similarity/delta" in legend and "Similarity/beta" not in legend
    assert "Legend/text_summary" in acc.Tags()["tensors"]


def test_log_lines_go_above_the_progress_bar(monkeypatch, tmp_path):
    written = []
    monkeypatch.setattr(setup.tqdm, "write", lambda s, file=None: written.append(s))
    handler = setup.TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(logging.LogRecord("main", logging.INFO, __file__, 1, "epoch %d", (3,), None))
    assert written == ["epoch 3"]


def test_missing_data_dir_says_the_folder_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere" / "data"
    args = train_flags.parse_args(["--data_dir", str(missing), "--log_dir", str(tmp_path / "l")])
    with pytest.raises(main_mod.DataError, match=r"the folder does not exist \(nor its parent"):
        setup.load_data(args)
