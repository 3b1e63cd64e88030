"""Reliability, second round (issue 17): one test (or a few) per defect class, each of which
failed before the fix. Classes 1 (the multimodal part) and 9 (two embedding files for one
feature) belong to the multimodal rewrite and are tested there.

Classes: 1 non-finite numbers, 2 schema.json, 3 flags, 4 checkpoint order, 5 writable
checkpoint folder, 6 a deleted best checkpoint, 7 a plain state_dict, 8 inconsistent seq.jsonl
lines, 10 inference input, 11 stale temporary folders, 12 a corrupt cache, 13 deep nesting,
14 feature ids with '.', 15 permissions.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from run_files import checkpoint
from training import cli_types
import infer
import main as main_mod
from training import flags as train_flags, run_state, validation
from run_files import tempdirs
from conftest import TINY, load_error, read_seq_lines, restored_logging, run_main, write_seq_lines
from dataset import DataError, load_dataset
from layouts.inference_v1 import load_inference_dir
from layouts.write_v1 import UserHistory, write_inference_dir

def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def run_dirs(base: Path) -> list[str]:
    return ["--log_dir", str(base / "logs"), "--tb_dir", str(base / "tb"),
            "--ckpt_dir", str(base / "ckpt"), "--cache_dir", str(base / "cache")]


def cli_error(argv: list[str], monkeypatch, capsys, module=main_mod) -> str:
    """module.cli() in-process -> its one `error:` line (exit 2, no traceback)."""
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    capsys.readouterr()
    with restored_logging():
        rc = module.cli()
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.rstrip().splitlines()[-1] == lines[0], err
    return lines[0]


# --------------------------------------------------------------------------- 1. non-finite numbers

@pytest.mark.parametrize("value", ["1e300", "-1e39", "4e38"])
def test_continual_value_beyond_float32_is_a_bad_record(small_v1, value, caplog):
    path = small_v1 / "item_feat_dict.json"
    text = path.read_text().replace('"203":7.25', f'"203":{value}')
    assert text != path.read_text()
    path.write_text(text)
    msg = load_error(small_v1)
    assert msg.startswith(f"{path}: item 4, feature 203: ") and "not a finite float32" in msg, msg
    data = load_dataset(small_v1, use_cache=False, on_bad_record="skip")
    assert data.stats["bad_records_skipped"] == 1
    col = data.schema.item_continual.index("203")
    assert data.tables.item_continual[4, col] == 0.0  # treated as missing
    assert np.isfinite(data.tables.item_continual).all()
    assert "skipped:" in caplog.text


def test_user_continual_value_beyond_float32_names_the_line(small_v1):
    lines = read_seq_lines(small_v1)
    lines[0] = lines[0].replace(b'"302":0.25', b'"302":1e300')
    write_seq_lines(small_v1, lines)
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / 'seq.jsonl'}:1: user 1, feature 302: "), msg


def _inference_dir(train_dir: Path, out: Path, candidates=None, users=None) -> Path:
    users = users if users is not None else [
        UserHistory("alice", {"300": "F"}, [(9001, 0, 500), (9002, 1, 501)])]
    candidates = candidates if candidates is not None else [
        {"creative_id": cid, "retrieval_id": r, "features": {"200": "shoes", "203": 1.0}}
        for r, cid in enumerate((9001, 9002, 9003), 1)]
    write_inference_dir(out, train_dir, users, candidates)
    return out


def test_inference_continual_value_beyond_float32_is_a_bad_record(small_v1, tmp_path):
    d = _inference_dir(small_v1, tmp_path / "eval")
    path = d / "predict_set.jsonl"
    path.write_text(path.read_text().replace('"203":1.0', '"203":1e300', 1))
    with pytest.raises(DataError, match="not a finite float32"):
        load_inference_dir(d)
    data = load_inference_dir(d, on_bad_record="skip")
    assert data.stats["bad_records_skipped"] == 1
    assert np.isfinite(data.tables.item_continual).all()


def test_a_nan_candidate_vector_never_reaches_topk():
    items = torch.ones(4, 3)
    items[2, 1] = float("nan")
    infer.check_finite_vectors(torch.ones(4, 3), "candidate", [11, 12, 13, 14])  # passes
    with pytest.raises(infer.InferenceError, match="candidate 13 "):
        infer.check_finite_vectors(items, "candidate", [11, 12, 13, 14])


# --------------------------------------------------------------------------- 2. schema.json

@pytest.mark.parametrize("doc,expected", [
    ({"item_sparce": ["200"]}, "unknown key 'item_sparce'"),
    (["200", "201"], "expected a JSON object of feature groups, got list"),
    ({"item_sparse": "200"}, "key 'item_sparse': expected a list of feature ids, got str"),
    ({"item_sparse": ["200"], "item_continual": ["200"]}, "'200' is in both"),
    ({"item_sparse": [200]}, "feature id 200 is not"),
])
def test_malformed_schema_json_is_an_error(small_v1, doc, expected):
    (small_v1 / "schema.json").write_text(json.dumps(doc))
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / 'schema.json'}: ") and expected in msg, msg


# --------------------------------------------------------------------------- 3. flags

@pytest.mark.parametrize("flags,message", [
    (["--dropout_rate", "1.5"], "argument --dropout_rate: must be in [0, 1), got 1.5"),
    (["--dropout_rate", "1.0"], "argument --dropout_rate: must be in [0, 1), got 1.0"),
    (["--batch_size", "0"], "argument --batch_size: must be a positive integer (>= 1), got 0"),
    (["--maxlen", "0"], "argument --maxlen: must be a positive integer"),
    (["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["--lr", "-1"], "argument --lr: must be a finite number > 0"),
    (["--adam_betas", "1.5", "0.9"], "argument --adam_betas: must be in [0, 1), got 1.5"),
    (["--log_every", "0"], "argument --log_every: must be a positive integer"),
    (["--device", "tpu0"], "argument --device: expected auto, cpu, cuda, cuda:N or mps"),
    (["--eval_every", "0"], "argument --eval_every: must be a positive integer"),
    (["--eval_sampled", "-5"], "argument --eval_sampled: must be an integer >= 0, got -5"),
    (["--num_epochs", "-1"], "argument --num_epochs: must be a positive integer"),
    (["--demo_items", "50"], "argument --demo_items: must be an integer >= 80, got 50"),
    (["--popular_ratio", "2"], "argument --popular_ratio: must be in [0, 1], got 2"),
    (["--eval_batch_size", "x"], "argument --eval_batch_size: expected an integer, got 'x'"),
])
def test_numeric_flags_are_checked_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        train_flags.parse_args(flags)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err


@pytest.mark.parametrize("module,flags,message", [
    ("infer", ["--state_dict_path", "x", "--topk", "0"], "argument --topk: must be a positive"),
    ("infer", ["--state_dict_path", "x", "--device", "gpu"], "argument --device: expected"),
    ("demo_data", ["--out", "x", "--num_items", "40"], "argument --num_items: must be an integer >= 80"),
    ("bench", ["--steps", "0"], "argument --steps: must be a positive integer"),
    ("make_large_data", ["--users", "0"], "argument --users: must be a positive integer"),
    ("ablation", ["--out", "x", "--seeds", "0"], "argument --seeds: must be a positive integer"),
])
def test_numeric_flags_of_the_other_commands(module, flags, message, capsys):
    mod = __import__(module)
    with pytest.raises(SystemExit) as e:
        if hasattr(mod, "parse_args"):
            mod.parse_args(flags)
        else:
            mod.main(flags)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("kind,good,bad", [
    (cli_types.positive_int, [("1", 1), ("7", 7)], ["0", "-3", "1.5", "x"]),
    (cli_types.non_negative_int, [("0", 0), ("4", 4)], ["-1", "x"]),
    (cli_types.positive_float, [("1e-3", 1e-3)], ["0", "-1", "inf", "nan"]),
    (cli_types.non_negative_float, [("0", 0.0)], ["-0.1", "inf"]),
    (cli_types.finite_float, [("-2.5", -2.5)], ["nan", "-inf", "x"]),
    (cli_types.unit_interval, [("0", 0.0), ("1", 1.0)], ["1.01", "-0.01"]),
    (cli_types.unit_interval_right_open, [("0", 0.0), ("0.99", 0.99)], ["1", "1.5", "-0.5"]),
    (cli_types.unit_interval_open, [("0.5", 0.5)], ["0", "1"]),
    (cli_types.int_at_least(3), [("3", 3)], ["2"]),
    (cli_types.device_name, [("cpu", "cpu"), ("cuda:1", "cuda:1"), ("auto", "auto")],
     ["tpu0", "cuda:", "cuda:x", ""]),
])
def test_cli_types(kind, good, bad):
    for text, value in good:
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            kind(text)


def test_eval_sampled_beyond_the_catalogue_fails_before_training(small_v1, tmp_path, monkeypatch,
                                                                 capsys):
    line = cli_error(["--data_dir", str(small_v1), *run_dirs(tmp_path), *TINY,
                      "--eval_protocol", "leave_one_out", "--eval_sampled", "5"],
                     monkeypatch, capsys)
    assert line.startswith("error: --eval_sampled 5: the catalogue has 6 items and the longest "
                           "history 3 distinct ones, so at most 3 negatives"), line
    assert not (tmp_path / "ckpt").exists()


# --------------------------------------------------------------------------- 4. checkpoint order

def _fake_checkpoint(ckpt_dir: Path, epoch: int, step: int, ndcg: float | None = None) -> Path:
    """A complete checkpoint folder written directly (config.json + a small model.pt)."""
    folder = ckpt_dir / checkpoint.checkpoint_name(epoch, step)
    folder.mkdir(parents=True)
    config = {"args": {}, "epoch": epoch, "global_step": step,
              "valid_metrics": None if ndcg is None else {"NDCG@10": ndcg}}
    torch.save({"model": {"w": torch.full((2,), float(epoch))}, "config": config},
               folder / checkpoint.WEIGHTS)
    (folder / checkpoint.CONFIG).write_text(json.dumps(config))
    return folder


def test_latest_checkpoint_by_recorded_epoch_and_step(tmp_path):
    for epoch in (998, 999, 1000, 1001):
        _fake_checkpoint(tmp_path, epoch, epoch * 10)
    assert checkpoint.latest_checkpoint(tmp_path).name == checkpoint.checkpoint_name(1001, 10010)
    odd = tmp_path / "epoch5_renamed_by_hand"  # the name says nothing; config.json decides
    shutil.copytree(tmp_path / checkpoint.checkpoint_name(1001, 10010), odd)
    edit_json(odd / checkpoint.CONFIG, lambda c: c.update(epoch=1002, global_step=10020))
    assert checkpoint.latest_checkpoint(tmp_path) == odd


# --------------------------------------------------------------------------- 5. writable folder

@pytest.mark.parametrize("where", ["a_file", "under_a_file", "read_only"])
def test_unwritable_ckpt_dir_fails_before_training(small_v1, tmp_path, monkeypatch, capsys, where):
    if where == "read_only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "blocker").write_text("a file")
    ckpt_dir = {"a_file": tmp_path / "blocker", "under_a_file": tmp_path / "blocker" / "ckpt",
                "read_only": tmp_path / "ro"}[where]
    if where == "read_only":
        ckpt_dir.mkdir(mode=0o500)
    argv = ["--data_dir", str(small_v1), *run_dirs(tmp_path), *TINY, "--ckpt_dir", str(ckpt_dir)]
    line = cli_error(argv, monkeypatch, capsys)
    assert line.startswith(f"error: --ckpt_dir {ckpt_dir}: cannot write checkpoints there"), line
    assert "training:" not in (tmp_path / "logs" / "train.log").read_text()


def test_full_disk_fails_before_training(small_v1, tmp_path, monkeypatch, capsys):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda p: usage._replace(free=1000))
    line = cli_error(["--data_dir", str(small_v1), *run_dirs(tmp_path), *TINY], monkeypatch, capsys)
    assert "a checkpoint needs about" in line and "0.0 MB free" in line, line


def test_disk_full_during_a_save_is_said_plainly(tmp_path, monkeypatch):
    def save(obj, f, *a, **kw):  # what torch's zip writer raises on ENOSPC
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.torch, "save", save)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=0))
    with pytest.raises(checkpoint.CheckpointError, match="no space left on the device"):
        checkpoint.save_checkpoint(tmp_path, {"model": {}}, {"epoch": 1, "global_step": 1})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 6. deleted best

def test_best_checkpoint_falls_back_to_the_best_that_exists(tmp_path, caplog):
    _fake_checkpoint(tmp_path, 1, 10, ndcg=0.2)
    _fake_checkpoint(tmp_path, 2, 20, ndcg=0.3)
    _fake_checkpoint(tmp_path, 4, 40, ndcg=0.1)
    state = run_state.RunState()
    state.epoch, state.best_path, state.best_epoch = 4, checkpoint.checkpoint_name(3, 30), 3
    assert validation.best_checkpoint(tmp_path, state).name == checkpoint.checkpoint_name(2, 20)
    assert (state.best_epoch, state.best_path) == (2, checkpoint.checkpoint_name(2, 20))
    assert "is gone" in caplog.text
    for p in tmp_path.iterdir():
        shutil.rmtree(p)
    state.best_path = checkpoint.checkpoint_name(2, 20)
    assert validation.best_checkpoint(tmp_path, state) is None  # the final weights stand
    assert state.best_path is None


def test_run_whose_best_checkpoint_was_deleted_finishes(demo_dir, tmp_path):
    argv = ["--data_dir", str(demo_dir), *run_dirs(tmp_path), *TINY,
            "--eval_protocol", "leave_one_out", "--num_epochs", "2"]
    run_main(argv)
    first, last = sorted((tmp_path / "ckpt").iterdir())
    # whichever epoch won, make the record say epoch 1 did, then prune epoch 1 as a user would
    saved = torch.load(last / checkpoint.WEIGHTS, weights_only=True)
    saved["config"]["run_state"].update(best_path=first.name, best_epoch=1)
    torch.save(saved, last / checkpoint.WEIGHTS)
    shutil.rmtree(first)
    again = run_main([*argv, "--resume"])  # before: the final reload failed, every time
    assert again["epoch"] == 2 and "test" in again
    assert again["best_checkpoint"] == str(last) and again["best_epoch"] == 2
    assert f"best checkpoint {first} is gone" in (tmp_path / "logs" / "train.log").read_text()


# --------------------------------------------------------------------------- 7. plain state_dict

def test_plain_state_dict_is_named_as_such(small_v1, tmp_path, monkeypatch, capsys):
    path = tmp_path / "model.pt"
    torch.save({"item_emb.weight": torch.zeros(7, 16)}, path)  # the original baseline's format
    line = cli_error(["--data_dir", str(small_v1), *run_dirs(tmp_path), *TINY,
                      "--state_dict_path", str(path)], monkeypatch, capsys)
    assert line == (f"error: {path}: not a training checkpoint of main.py but a plain state_dict "
                    "(weights only, e.g. the original baseline's model.pt); pass a checkpoint "
                    "folder that main.py wrote"), line


@pytest.mark.parametrize("zip_format", [True, False])
def test_mapped_read_names_a_plain_state_dict_in_either_format(tmp_path, zip_format):
    # infer.py maps checkpoints (mmap); torch's legacy format cannot be mapped and is read whole
    path = tmp_path / "model.pt"
    torch.save({"item_emb.weight": torch.zeros(7, 16)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(checkpoint.CheckpointError, match="but a plain state_dict"):
        checkpoint.load_training_checkpoint(path, mmap=True)


# --------------------------------------------------------------------------- 8. seq.jsonl lines

def test_one_user_on_two_lines_is_a_bad_record(small_v1):
    lines = read_seq_lines(small_v1)
    write_seq_lines(small_v1, lines + [lines[2]])  # carol again, as line 5
    msg = load_error(small_v1)
    assert msg == (f"{small_v1 / 'seq.jsonl'}:5: user 3 already has line 3: seq.jsonl holds one "
                   "line per user"), msg
    data = load_dataset(small_v1, use_cache=False, on_bad_record="skip")
    assert data.stats["bad_records_skipped"] == 1
    assert len(set(data.seqs.line_user.tolist())) == data.seqs.num_lines == 3


def test_two_users_on_one_line_is_a_bad_record(small_v1):
    lines = read_seq_lines(small_v1)
    merged = json.loads(lines[1]) + json.loads(lines[2])  # bob's records, then carol's
    write_seq_lines(small_v1, [lines[0], json.dumps(merged).encode(), lines[3]])
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / 'seq.jsonl'}:2: record 4 names user 3 but earlier records "
                          "name user 2"), msg
    data = load_dataset(small_v1, use_cache=False, on_bad_record="skip")
    assert data.seqs.line_user.tolist() == [1]


def test_items_out_of_time_order_are_sorted(small_v1, caplog):
    lines = read_seq_lines(small_v1)
    recs = json.loads(lines[0])  # alice: items 1, 2, 3, 1 at 100..103, profile last
    recs[0][5], recs[2][5] = 102, 100  # now the first and third happened in the other order
    lines[0] = json.dumps(recs).encode()
    write_seq_lines(small_v1, lines)
    data = load_dataset(small_v1, use_cache=False)
    seqs = data.seqs
    first = seqs.tok_id[seqs.line_offsets[0]:seqs.line_offsets[1]].tolist()
    assert first == [1, 3, 2, 1, 1]  # profile (user 1) first, then items by timestamp
    assert "1 lines had item records out of timestamp order: sorted" in caplog.text


# --------------------------------------------------------------------------- 10. inference input

def test_duplicate_retrieval_id_is_a_bad_record(small_v1, tmp_path):
    cands = [{"creative_id": 9001, "retrieval_id": 1, "features": {}},
             {"creative_id": 9002, "retrieval_id": 1, "features": {}},
             {"creative_id": 9003, "retrieval_id": 2, "features": {}}]
    d = _inference_dir(small_v1, tmp_path / "eval", candidates=cands)
    with pytest.raises(DataError, match=r"predict_set.jsonl:2: retrieval_id 1 was already given "
                                        r"on line 1"):
        load_inference_dir(d)
    data = load_inference_dir(d, on_bad_record="skip")
    assert data.cand_creative_ids.tolist() == [9001, 9003]
    assert data.stats["bad_records_skipped"] == 1


def test_empty_predict_seq_is_an_error(small_v1, tmp_path):
    d = _inference_dir(small_v1, tmp_path / "eval", users=[])
    with pytest.raises(DataError, match=r"predict_seq.jsonl: no users to recommend for \(0 lines"):
        load_inference_dir(d)


# --------------------------------------------------------------------------- 11. stale temporaries

def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
            pid -= 1
        except ProcessLookupError:
            return pid
        except PermissionError:
            pid -= 1


def test_stale_checkpoint_temporaries_removed_at_start(tmp_path):
    host = tempdirs._host()
    dead = tmp_path / f".tmp-epoch002_step000000010@{host}.{_dead_pid()}.abcd"
    live = tmp_path / f".tmp-epoch003_step000000015@{host}.{os.getpid()}.abcd"
    old = tmp_path / ".tmp-epoch001_step000000005xyz"  # an older version's mkdtemp name
    fresh = tmp_path / ".tmp-epoch004_step000000020xyz"
    for p in (dead, live, old, fresh):
        p.mkdir()
        (p / "model.pt").write_bytes(b"partial")
    past = tempdirs.time.time() - 2 * tempdirs.STALE_SECONDS
    os.utime(old / "model.pt", (past, past))
    os.utime(old, (past, past))
    checkpoint.prepare_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, fresh.name])


def test_stale_cache_temporaries_and_outdated_entries_removed(small_v1, tmp_path):
    cache = tmp_path / "cache"
    load_dataset(small_v1, cache_dir=cache)
    (first,) = cache.iterdir()
    leftover = cache / f".tmp-{first.name}@{tempdirs._host()}.{_dead_pid()}.abcd"
    legacy = cache / f"{first.name}.tmpx8k2_q"  # an older version's name, untouched for hours
    for p in (leftover, legacy):
        p.mkdir()
        (p / "tok_id.npy").write_bytes(b"partial")
    past = tempdirs.time.time() - 2 * tempdirs.STALE_SECONDS
    os.utime(legacy / "tok_id.npy", (past, past))
    os.utime(legacy, (past, past))
    lines = read_seq_lines(small_v1)
    write_seq_lines(small_v1, lines[:3])  # the input changed: a new entry, the old one outdated
    load_dataset(small_v1, cache_dir=cache)
    (second,) = cache.iterdir()
    assert second.name != first.name


# --------------------------------------------------------------------------- 12. corrupt cache

@pytest.mark.parametrize("damage", ["truncated_array", "meta_not_json", "meta_missing_key",
                                    "array_of_another_length"])
def test_corrupt_cache_is_rebuilt_with_a_warning(small_v1, tmp_path, damage, caplog):
    cache = tmp_path / "cache"
    want = load_dataset(small_v1, cache_dir=cache)
    (entry,) = cache.iterdir()
    if damage == "truncated_array":
        path = entry / "tok_id.npy"
        path.write_bytes(path.read_bytes()[:-8])
    elif damage == "meta_not_json":
        (entry / "meta.json").write_text('{"version": 2, "sch')
    elif damage == "meta_missing_key":
        edit_json(entry / "meta.json", lambda m: m.pop("itemnum"))
    else:
        np.save(entry / "user_sparse.npy", np.zeros((2, 1), np.int32))
    got = load_dataset(small_v1, cache_dir=cache)
    assert "is damaged" in caplog.text and "parsing the data again" in caplog.text
    assert np.array_equal(got.seqs.tok_id, want.seqs.tok_id)
    assert np.array_equal(got.tables.user_sparse, want.tables.user_sparse)
    again = load_dataset(small_v1, cache_dir=cache)  # the rebuilt entry reads cleanly
    assert np.array_equal(again.seqs.tok_id, want.seqs.tok_id)


# --------------------------------------------------------------------------- 13. deep nesting

def test_deeply_nested_json_is_a_bad_record(small_v1):
    lines = read_seq_lines(small_v1)
    deep = b"[" * 3000 + b"]" * 3000
    lines[2] = lines[2][:-1] + b"," + deep + b"]"
    write_seq_lines(small_v1, lines)
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / 'seq.jsonl'}:3: "), msg
    assert len(msg) < 400
    data = load_dataset(small_v1, use_cache=False, on_bad_record="skip")
    assert data.stats["bad_records_skipped"] == 1


def test_deeply_nested_feature_value_is_a_bad_record(small_v1):
    path = small_v1 / "item_feat_dict.json"
    path.write_text(path.read_text().replace('"203":7.25', '"203":' + "[" * 1500 + "]" * 1500))
    msg = load_error(small_v1)
    assert "item 4, feature 203: expected a number, got [[[" in msg and len(msg) < 400, msg


# --------------------------------------------------------------------------- 14. '.' in an id

def test_feature_id_with_a_dot_is_a_data_error(small_v1):
    (small_v1 / "schema.json").unlink()  # groups discovered from the data
    path = small_v1 / "item_feat_dict.json"
    edit_json(path, lambda d: d["2"].update({"20.5": 1.0}))
    msg = load_error(small_v1)
    assert msg.startswith(f"{path}: item features: feature id '20.5' is not 1-64 letters"), msg


def test_feature_id_that_is_a_module_attribute_is_a_data_error(small_v1):
    edit_json(small_v1 / "schema.json", lambda d: d["item_sparse"].append("keys"))
    assert "reserved name" in load_error(small_v1)


# --------------------------------------------------------------------------- 15. permissions

def test_checkpoint_and_cache_folders_have_ordinary_permissions(small_v1, tmp_path):
    old = os.umask(0o022)
    try:
        folder = checkpoint.save_checkpoint(tmp_path / "ckpt", {"model": {}},
                                            {"epoch": 1, "global_step": 1})
        load_dataset(small_v1, cache_dir=tmp_path / "cache")
    finally:
        os.umask(old)
    (entry,) = (tmp_path / "cache").iterdir()
    for path in (folder, entry):
        assert path.stat().st_mode & 0o777 == 0o755, oct(path.stat().st_mode)
    assert (folder / checkpoint.WEIGHTS).stat().st_mode & 0o044 == 0o044


def test_make_temp_dir_records_its_writer(tmp_path):
    path = tempdirs.make_temp_dir(tmp_path, ".tmp-", "label")
    assert path.name.startswith(".tmp-label@") and path.is_dir()
    assert not tempdirs.is_stale(path)  # this process is alive
    assert tempdirs.remove_stale(tmp_path, ".tmp-") == 0
