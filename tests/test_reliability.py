"""Reliability: clear errors for bad input, no code from data, nothing half-written, and the
numerical guard (requirements 1, 2, 4 of the reliability issue; crash/resume is test_resume.py).

- every error case of requirement 1 through `load_dataset`: the DataError names the file and
  the line (or key) and says what was expected;
- a few of them through the command line (`python main.py ...`, run concurrently in one
  module fixture): exit status 2, exactly one stderr line starting `error:` (the last), no
  traceback, and nothing written where a later run would look;
- nothing half-written: no cache after a failed parse or a failed cache write, no partial
  checkpoint after a failed save;
- skip policies: a user without items, `--on_bad_record skip`;
- the restricted unpickler and a static scan of the project's sources (no eval/exec, every
  torch.load with weights_only=True, no other unpickling);
- a checkpoint of another configuration -> CheckpointError naming the flag;
- a non-finite loss -> NonFiniteLoss naming the step; the last checkpoint still loads.

Each test here once exposed or guards against a specific failure mode.
"""
from __future__ import annotations

import ast
import collections
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from run_files import checkpoint
import dataset as dataset_mod
import main as main_mod
from training import flags as train_flags, step as train_step
from layouts import safe_pickle
from conftest import TINY, ROOT, load_error, read_seq_lines, restored_logging, run_main, write_seq_lines
from dataset import DataError, load_dataset

def edit_record(d: Path, line: int, rec: int, new) -> None:
    """Replace record `rec` of 1-based line `line` of seq.jsonl (offsets rewritten to match)."""
    lines = read_seq_lines(d)
    recs = json.loads(lines[line - 1])
    recs[rec] = new(recs[rec]) if callable(new) else new
    lines[line - 1] = json.dumps(recs).encode()
    write_seq_lines(d, lines)


def _with(rec: list, slot: int, value) -> list:
    rec = list(rec)
    rec[slot] = value
    return rec


# --------------------------------------------------------------------------- 1. bad input

def test_malformed_json_names_file_and_line(small_v1):
    lines = read_seq_lines(small_v1)
    lines[1] = lines[1][:40]
    write_seq_lines(small_v1, lines)
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / 'seq.jsonl'}:2: invalid JSON"), msg


def test_record_of_the_wrong_arity(small_v1):
    edit_record(small_v1, 3, 1, [3, 6, None])
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / 'seq.jsonl'}:3: record 1: "), msg
    assert "expected [user_id, item_id, user_feature, item_feature, action_type, timestamp]" in msg


# small_v1: line 1 alice (records 0-3 items, 4 profile), line 2 bob (0 profile, 1-3 items),
# line 3 carol (items), line 4 dave (a profile only).
@pytest.mark.parametrize("line,rec,slot,value,expected", [
    (1, 2, 4, "click", "action_type must be an integer or null, got 'click'"),
    (1, 2, 4, 1.5, "action_type must be an integer or null"),
    (2, 1, 1, "9004", "item id '9004' outside the indexer"),
    (2, 1, 0, 2.0, "user id 2.0 / item id 4 outside the indexer"),
    (1, 4, 2, ["F"], "user_feature must be an object"),
    (3, 0, 3, "red", "item_feature must be an object"),
], ids=["action-str", "action-float", "item-str", "user-float", "profile-list", "itemfeat-str"])
def test_record_of_the_wrong_types(small_v1, line, rec, slot, value, expected):
    edit_record(small_v1, line, rec, lambda r: _with(r, slot, value))
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / 'seq.jsonl'}:{line}: record {rec}: "), msg
    assert expected in msg, msg


@pytest.mark.parametrize("slot,value", [(1, 7), (1, -1), (1, 2 ** 40), (0, 5), (0, -3)],
                         ids=["item-7", "item-neg", "item-huge", "user-5", "user-neg"])
def test_ids_outside_the_indexer(small_v1, slot, value):
    edit_record(small_v1, 3, 0, lambda r: _with(r, slot, value))
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / 'seq.jsonl'}:3: record 0: "), msg
    assert "outside the indexer (users 1..4, items 1..6)" in msg and repr(value) in msg


def test_item_feat_dict_key_outside_the_indexer(small_v1):
    path = small_v1 / "item_feat_dict.json"
    feats = json.loads(path.read_text())
    feats["99"] = {"200": 1}
    path.write_text(json.dumps(feats))
    msg = load_error(small_v1)
    assert msg.startswith(f"{path}: key '99'") and "1..6" in msg, msg


def test_item_feat_dict_value_not_an_object(small_v1):
    path = small_v1 / "item_feat_dict.json"
    feats = json.loads(path.read_text())
    feats["3"] = [1, 2]
    path.write_text(json.dumps(feats))
    msg = load_error(small_v1)
    assert msg.startswith(f"{path}: key '3': expected a feature object"), msg


def test_item_feature_value_outside_its_vocabulary(small_v1):
    path = small_v1 / "item_feat_dict.json"
    feats = json.loads(path.read_text())
    feats["2"]["201"] = 99  # vocabulary of 201 has 2 values
    path.write_text(json.dumps(feats))
    msg = load_error(small_v1)
    assert "item_feat_dict.json" in msg and "item 2, feature 201" in msg, msg
    assert "expected a value id in 0..2" in msg and "99" in msg, msg


def test_truncated_item_feat_dict(small_v1):
    path = small_v1 / "item_feat_dict.json"
    path.write_bytes(path.read_bytes()[:57])
    msg = load_error(small_v1)
    assert msg.startswith(f"{path}: invalid JSON"), msg


def test_user_feature_value_error_names_file_and_line(small_v1):
    edit_record(small_v1, 2, 0, lambda r: _with(r, 2, {"300": 42, "301": [2]}))
    msg = load_error(small_v1)
    assert f"{small_v1 / 'seq.jsonl'}:2" in msg and "feature 300" in msg, msg


def test_seq_offsets_that_do_not_match(small_v1):
    path = small_v1 / "seq_offsets.pkl"
    offsets = pickle.loads(path.read_bytes())
    offsets[2] += 3
    path.write_bytes(pickle.dumps(offsets))
    msg = load_error(small_v1)
    assert msg.startswith(f"{path}: entry 2 is {offsets[2]} but line 3 of seq.jsonl starts at "
                          f"byte {offsets[2] - 3}"), msg


def test_seq_offsets_with_a_line_too_few(small_v1):
    path = small_v1 / "seq_offsets.pkl"
    path.write_bytes(pickle.dumps(pickle.loads(path.read_bytes())[:-1]))
    msg = load_error(small_v1)
    assert msg.startswith(f"{path}: entry 3 is nothing but line 4"), msg


@pytest.mark.parametrize("name", ["seq.jsonl", "seq_offsets.pkl", "indexer.pkl",
                                  "item_feat_dict.json"])
def test_missing_file(small_v1, name):
    (small_v1 / name).unlink()
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / name}: missing"), msg


def test_missing_multimodal_feature(small_v1):
    msg = load_error(small_v1, mm_emb_ids=["82"])
    assert msg.startswith(str(small_v1 / "creative_emb")) and "--mm_emb_id 82" in msg, msg


def test_multimodal_vector_of_the_wrong_dimension_pickle(small_v1):
    path = small_v1 / "creative_emb" / "emb_81_32.pkl"
    table = pickle.loads(path.read_bytes())
    table[9002] = np.zeros(16, np.float32)
    path.write_bytes(pickle.dumps(table))
    msg = load_error(small_v1)
    assert msg.startswith(f"{path}: key 9002: creative 9002: expected a vector of dimension 32, "
                          "got shape (16,)"), msg


def test_multimodal_vector_of_the_wrong_dimension_jsonlines(make_v1):
    from conftest import SMALL_KINDS, small_items, small_mm, small_users
    d = make_v1(small_users(), small_items(), SMALL_KINDS, small_mm(), mm_format="jsonl")
    part = d / "creative_emb" / "emb_81_32" / "part-00000"  # two rows
    lines = part.read_text().splitlines()
    row = json.loads(lines[1])
    row["emb"] = row["emb"][:31]
    lines[1] = json.dumps(row)
    part.write_text("\n".join(lines) + "\n")
    msg = load_error(d)
    assert msg.startswith(f"{part}:2: creative {row['anonymous_cid']}: expected a vector of "
                          "dimension 32, got shape (31,)"), msg


@pytest.mark.parametrize("how", ["no-lines", "no-items"])
def test_empty_dataset(small_v1, how):
    lines = read_seq_lines(small_v1)
    write_seq_lines(small_v1, [] if how == "no-lines" else lines[3:])  # dave has no items
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / 'seq.jsonl'}: no user has any item"), msg


# --------------------------------------------------------------------------- skip policies

def test_user_without_items_is_skipped_and_counted(small_v1, caplog):
    caplog.set_level(logging.INFO, logger="layouts.v1")  # the V1 parse logs its summary
    data = load_dataset(small_v1, use_cache=False)
    assert data.stats["lines_without_items"] == 1  # dave
    assert data.seqs.num_lines == 3 and 4 not in np.asarray(data.seqs.line_user).tolist()
    assert any("1 lines skipped (no items)" in r.getMessage() for r in caplog.records)


def _three_bad_records(d: Path) -> None:
    edit_record(d, 1, 0, [1, 2, 3])                                   # wrong arity
    edit_record(d, 3, 0, lambda r: _with(r, 1, 77))                   # item outside the indexer
    lines = read_seq_lines(d)
    lines[1] = lines[1][:30]                                          # invalid JSON
    write_seq_lines(d, lines)


def test_on_bad_record_skip_counts_and_logs(small_v1, caplog, tmp_path):
    _three_bad_records(small_v1)
    with pytest.raises(DataError, match=re.escape(f"{small_v1 / 'seq.jsonl'}:1: record 0")):
        load_dataset(small_v1, cache_dir=tmp_path / "cache")
    caplog.set_level(logging.INFO, logger="layouts.v1")
    data = load_dataset(small_v1, cache_dir=tmp_path / "cache", on_bad_record="skip")
    assert data.stats["bad_records_skipped"] == 3
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    seq = small_v1 / "seq.jsonl"
    assert [m.split(": ")[1] for m in skipped] == [f"{seq}:1", f"{seq}:2", f"{seq}:3"], skipped
    assert any("3 bad records skipped" in r.getMessage() for r in caplog.records)
    # what was not skipped is there: alice lost one record, bob's line is gone, carol kept 9006
    assert data.seqs.num_lines == 2
    assert np.asarray(data.seqs.line_offsets).tolist() == [0, 4, 5]
    # The cache is keyed by the policy: the skip parse is not served to an 'error' run.
    with pytest.raises(DataError):
        load_dataset(small_v1, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- 1. the CLI

# Two cases run as real `python main.py` processes, started in the background as early as
# possible (each pays seconds of torch imports); the others call main.cli() in-process, which
# is the same code path minus the interpreter (exit status = its return value).

ENV = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_")} | {"OMP_NUM_THREADS": "1"}


class Background:
    """`python main.py` processes running while the in-process tests go on."""

    def __init__(self):
        self.procs, self.results = {}, {}

    def start(self, name: str, argv: list[str], cwd: Path) -> None:
        self.procs[name] = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), *argv], cwd=cwd, env=ENV,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, name: str) -> dict:
        if name not in self.results:
            proc = self.procs[name]
            stdout, stderr = proc.communicate(timeout=300)
            self.results[name] = {"rc": proc.returncode, "stdout": stdout, "stderr": stderr}
        return self.results[name]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def _run_dirs(base: Path) -> list[str]:
    return ["--log_dir", str(base / "logs"), "--tb_dir", str(base / "tb"),
            "--ckpt_dir", str(base / "ckpt"), "--cache_dir", str(base / "cache")]


def _small_dir(root: Path) -> Path:
    from conftest import SMALL_KINDS, small_items, small_mm, small_users
    from layouts.write_v1 import write_v1_dataset
    d = root / "data"
    write_v1_dataset(d, small_users(), small_items(), SMALL_KINDS, small_mm(), "pkl")
    return d


@pytest.fixture(scope="module")
def background(tmp_path_factory):
    """Starts both processes at once: a malformed seq.jsonl, and `--resume` over a checkpoint
    saved (by checkpoint.save_checkpoint) for --hidden_units 16 with --hidden_units 32. The
    in-process tests refuse real trained checkpoints the same way."""
    bg = Background()
    base = tmp_path_factory.mktemp("cli_bad_json")
    d = _small_dir(base)
    lines = read_seq_lines(d)
    lines[1] = lines[1][:30]
    write_seq_lines(d, lines)
    bg.start("bad_json", ["--data_dir", str(d), *_run_dirs(base), *TINY], base)
    bg.bad_json_base = base

    base = tmp_path_factory.mktemp("cli_other_config")
    d = _small_dir(base)
    args = vars(train_flags.parse_args(["--data_dir", str(d), *_run_dirs(base), *TINY]))
    state = {"model": {}, "optimizer": {}, "sampler": "{}"}
    ckpt = checkpoint.save_checkpoint(base / "ckpt", state,
                                      {"args": args, "epoch": 1, "global_step": 1})
    bg.other_config = {"ckpt": ckpt, "before": _mtimes(base / "ckpt")}
    bg.start("other_config", ["--data_dir", str(d), *_run_dirs(base), *TINY, "--resume",
                              "--num_epochs", "2", "--hidden_units", "32"], base)
    yield bg
    bg.close()


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module", autouse=True)
def _start_background_early(background):
    yield


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory) -> dict:
    """One epoch on conftest's demo data (in-process main): a real checkpoint to refuse."""
    base = tmp_path_factory.mktemp("trained")
    cache = base / "cache"
    argv = ["--data_dir", str(demo_dir), "--cache_dir", str(cache), "--log_dir", str(base / "logs"),
            "--tb_dir", str(base / "tb"), "--ckpt_dir", str(base / "ckpt"), *TINY]
    result = run_main(argv)
    (ckpt,) = sorted((base / "ckpt").iterdir())
    return {"base": base, "cache": cache, "argv": argv, "ckpt": ckpt, "result": result}


def one_error_line(rc: int, stderr: str) -> str:
    """Exit status 2 and exactly one `error:` line on stderr, the last one, no traceback."""
    assert rc == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def run_cli(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """main.cli() in-process with this argv -> (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["main.py", *argv])
    capsys.readouterr()
    with restored_logging():
        rc = main_mod.cli()
    return rc, capsys.readouterr().err


class _RunsACommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cli_missing_file(tmp_path, monkeypatch, capsys):
    d = _small_dir(tmp_path)
    (d / "seq_offsets.pkl").unlink()
    line = one_error_line(*run_cli(["--data_dir", str(d), *_run_dirs(tmp_path), *TINY],
                                   monkeypatch, capsys))
    assert line == (f"error: {d / 'seq_offsets.pkl'}: missing (a V1 data directory needs "
                    "seq.jsonl, seq_offsets.pkl, indexer.pkl and item_feat_dict.json)"), line
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ckpt").exists()


def test_cli_refuses_a_pickle_that_runs_code(tmp_path, monkeypatch, capsys):
    d = _small_dir(tmp_path)
    marker = tmp_path / "pwned"
    (d / "indexer.pkl").write_bytes(pickle.dumps(
        {"u": {}, "i": {}, "f": _RunsACommand(f"touch {marker}")}))
    line = one_error_line(*run_cli(["--data_dir", str(d), *_run_dirs(tmp_path), *TINY],
                                   monkeypatch, capsys))
    assert line.startswith(f"error: {d / 'indexer.pkl'}: refusing to load "), line
    assert "system" in line
    assert not marker.exists(), "the pickle's command ran"


def test_cli_non_finite_loss(trained, tmp_path, monkeypatch, capsys):
    argv = [*trained["argv"], *_run_dirs(tmp_path)[:6], "--num_epochs", "2", "--lr", "1e30"]
    line = one_error_line(*run_cli(argv, monkeypatch, capsys))
    assert re.fullmatch(r"error: the loss became non-finite at step \d+; the last checkpoint "
                        r"is intact .*", line), line
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())


@pytest.mark.parametrize("flags,message", [
    (["--feature_fusion", "sum"], "error: --feature_fusion sum adds feature vectors, but features "
                                  "['203', '302'] are continual scalars; use --feature_fusion dnn"),
    (["--num_heads", "3"], "error: --hidden_units 16 is not divisible by --num_heads 3"),
])
def test_cli_model_the_data_cannot_have(flags, message, tmp_path, monkeypatch, capsys):
    d = _small_dir(tmp_path)
    line = one_error_line(*run_cli(["--data_dir", str(d), *_run_dirs(tmp_path), *TINY, *flags],
                                   monkeypatch, capsys))
    assert line == message, line
    assert not (tmp_path / "ckpt").exists()


@pytest.fixture(scope="module")
def demo_copy(demo_dir, tmp_path_factory) -> Path:
    """conftest's demo data with line 5 cut short (one bad record), for the skip run."""
    out = tmp_path_factory.mktemp("demo_bad") / "data"
    shutil.copytree(demo_dir, out)
    lines = read_seq_lines(out)
    lines[4] = lines[4][:50]
    write_seq_lines(out, lines)
    return out


def test_cli_on_bad_record_skip(demo_copy, tmp_path, monkeypatch, capsys):
    argv = ["--data_dir", str(demo_copy), *_run_dirs(tmp_path), *TINY]
    line = one_error_line(*run_cli(argv, monkeypatch, capsys))
    assert line.startswith(f"error: {demo_copy / 'seq.jsonl'}:5: invalid JSON"), line
    rc, stderr = run_cli([*argv, "--on_bad_record", "skip"], monkeypatch, capsys)
    assert rc == 0, stderr
    log = (tmp_path / "logs" / "train.log").read_text()
    assert f"skipped: {demo_copy / 'seq.jsonl'}:5: invalid JSON" in log
    assert ", 1 bad records skipped" in log
    (ckpt,) = (tmp_path / "ckpt").iterdir()
    assert ckpt.name.startswith("epoch001_")


# --------------------------------------------------------------------------- nothing half-written

@pytest.mark.parametrize("breakage", ["json", "offsets", "ids"])
def test_failed_parse_writes_no_cache(small_v1, tmp_path, breakage):
    if breakage == "json":
        lines = read_seq_lines(small_v1)
        write_seq_lines(small_v1, [lines[0][:-3], *lines[1:]])
    elif breakage == "offsets":
        (small_v1 / "seq_offsets.pkl").write_bytes(pickle.dumps([0, 1, 2, 3]))
    else:
        edit_record(small_v1, 4, 0, lambda r: _with(r, 0, 99))
    cache = tmp_path / "cache"
    with pytest.raises(DataError):
        load_dataset(small_v1, cache_dir=cache)
    assert not cache.exists() or not list(cache.iterdir())
    with pytest.raises(DataError):  # the default cache next to the data: nothing there either
        load_dataset(small_v1)
    assert not (small_v1 / ".cache").exists() or not list((small_v1 / ".cache").iterdir())


def _failing_np_save(monkeypatch, after: int, exc: BaseException):
    real, calls = np.save, []

    def save(path, arr, *a, **kw):
        calls.append(path)
        if len(calls) > after:
            Path(path).write_bytes(b"\x93NUMPY partial")
            raise exc
        return real(path, arr, *a, **kw)

    monkeypatch.setattr(dataset_mod.np, "save", save)
    return calls


def test_failed_cache_write_leaves_nothing(small_v1, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    calls = _failing_np_save(monkeypatch, after=4, exc=OSError(28, "No space left on device"))
    data = load_dataset(small_v1, cache_dir=cache)  # the parse stands; only the cache is lost
    assert data.seqs.num_lines == 3
    assert "No space left on device" in caplog.text
    assert len(calls) == 5
    assert list(cache.iterdir()) == [], "a failed cache write left files behind"
    monkeypatch.undo()
    data = load_dataset(small_v1, cache_dir=cache)  # the next run parses and caches normally
    (entry,) = cache.iterdir()
    assert (entry / "meta.json").is_file() and data.seqs.num_lines == 3


def test_interrupted_cache_write_leaves_nothing(small_v1, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _failing_np_save(monkeypatch, after=4, exc=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        load_dataset(small_v1, cache_dir=cache)
    assert list(cache.iterdir()) == []


def _tiny_state() -> tuple[dict, dict]:
    state = {"model": {"w": torch.arange(6.0)}, "optimizer": {}, "sampler": "{}"}
    return state, {"args": {"hidden_units": 16}, "epoch": 1, "global_step": 5}


def _failing_torch_save(monkeypatch, exc: BaseException):
    def save(obj, f, *a, **kw):
        Path(f).write_bytes(b"PK\x03\x04 partial")  # half a zip file, then the failure
        raise exc

    monkeypatch.setattr(checkpoint.torch, "save", save)


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "interrupt"])
def test_failed_checkpoint_save_leaves_no_partial_folder(tmp_path, monkeypatch, exc):
    state, config = _tiny_state()
    first = checkpoint.save_checkpoint(tmp_path, state, config)
    _failing_torch_save(monkeypatch, exc)
    # a write failure is reported as one CheckpointError line (a full disk said as such)
    expected = checkpoint.CheckpointError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected):
        checkpoint.save_checkpoint(tmp_path, state, {**config, "epoch": 2, "global_step": 10})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "a partial or temp folder left"
    assert checkpoint.latest_checkpoint(tmp_path) == first
    assert torch.equal(checkpoint.load_checkpoint(first)["model"]["w"], torch.arange(6.0))


def test_failed_resave_of_the_same_step_keeps_the_old_one(tmp_path, monkeypatch):
    state, config = _tiny_state()
    first = checkpoint.save_checkpoint(tmp_path, state, config)
    _failing_torch_save(monkeypatch, OSError(5, "I/O error"))
    with pytest.raises(checkpoint.CheckpointError, match="I/O error"):
        checkpoint.save_checkpoint(tmp_path, {**state, "model": {"w": torch.zeros(6)}}, config)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    assert torch.equal(checkpoint.load_checkpoint(first)["model"]["w"], torch.arange(6.0))


def test_latest_checkpoint_ignores_crash_leftovers(tmp_path):
    state, config = _tiny_state()
    good = checkpoint.save_checkpoint(tmp_path, state, config)
    tmp = tmp_path / f".tmp-{checkpoint.checkpoint_name(2, 10)}abc"  # killed mid-save
    tmp.mkdir()
    (tmp / "model.pt").write_bytes(b"partial")
    half = tmp_path / checkpoint.checkpoint_name(3, 15)  # weights without config: incomplete
    half.mkdir()
    (half / "model.pt").write_bytes(b"partial")
    (tmp_path / checkpoint.checkpoint_name(9, 99)).write_text("a file, not a folder")
    assert checkpoint.latest_checkpoint(tmp_path) == good


def test_failed_save_in_training_keeps_the_last_checkpoint(trained, tmp_path, monkeypatch):
    """main: epoch 1 saved, epoch 2's save fails -> the run fails, epoch 1 stays the newest."""
    real, calls = torch.save, []

    def save(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:
            Path(f).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    argv = [*trained["argv"], *_run_dirs(tmp_path)[:6], "--num_epochs", "2"]
    with pytest.raises(checkpoint.CheckpointError, match="no space left"):
        run_main(argv)
    monkeypatch.undo()
    names = [p.name for p in (tmp_path / "ckpt").iterdir()]
    assert names == [trained["ckpt"].name], names
    saved = checkpoint.load_checkpoint(tmp_path / "ckpt" / names[0])
    assert saved["config"]["epoch"] == 1


# --------------------------------------------------------------------------- 2. no code from data

_PROTO0 = {  # hand-written protocol-0 pickles: a global, then a call
    "builtins.eval": b"cbuiltins\neval\n(S'__import__(\"os\").system(\"true\")'\ntR.",
    "builtins.exec": b"cbuiltins\nexec\n(S'x = 1'\ntR.",
    "builtins.getattr": b"cbuiltins\ngetattr\n(cbuiltins\ndict\nS'get'\ntR.",
    "builtins.__import__": b"cbuiltins\n__import__\n(S'os'\ntR.",
    "subprocess.Popen": b"csubprocess\nPopen\n((S'true'\nltR.",
    "posix.system": b"cposix\nsystem\n(S'true'\ntR.",
    "nt.system": b"cnt\nsystem\n(S'true'\ntR.",
    "torch.load": b"ctorch\nload\n(S'x'\ntR.",
    "numpy.load": b"cnumpy\nload\n(S'x'\ntR.",
}


@pytest.mark.parametrize("name", sorted(_PROTO0))
def test_unpickler_refuses_globals_that_run_code(name):
    with pytest.raises(safe_pickle.UnsafePickleError, match=re.escape(name)):
        safe_pickle.loads(_PROTO0[name])


@pytest.mark.parametrize("where", ["top", "nested", "default_factory"])
def test_unpickler_refuses_os_system_anywhere(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = _RunsACommand(f"touch {marker}")
    obj = {"top": evil, "nested": {"u": {"a": [1, {"b": evil}]}},
           "default_factory": collections.defaultdict(os.system)}[where]
    with pytest.raises(safe_pickle.UnsafePickleError, match="system"):
        safe_pickle.loads(pickle.dumps(obj, protocol=4))
    assert not marker.exists()


def test_unpickler_payload_through_load_dataset(small_v1, tmp_path):
    marker = tmp_path / "pwned"
    (small_v1 / "seq_offsets.pkl").write_bytes(pickle.dumps([0, _RunsACommand(f"touch {marker}")]))
    msg = load_error(small_v1)
    assert msg.startswith(f"{small_v1 / 'seq_offsets.pkl'}: refusing to load ") and "system" in msg
    assert not marker.exists()


_PLAIN = {"indexer": {"u": {"a": 1}, "i": {9001: 1, "x": 2},
                      "f": collections.defaultdict(dict, {"100": {"v": 1}}), "extra": (1, 2.5)},
          "emb": {9001: np.arange(32, dtype=np.float32), 9002: np.ones(32, np.float32)},
          "offsets": [0, 17, np.int64(40)]}


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_unpickler_loads_plain_data(protocol):
    for name, obj in _PLAIN.items():
        back = safe_pickle.loads(pickle.dumps(obj, protocol=protocol))
        if name == "emb":
            assert all(np.array_equal(back[k], v) and back[k].dtype == np.float32
                       for k, v in obj.items())
        else:
            assert back == obj and type(back) is type(obj)
    assert type(safe_pickle.loads(pickle.dumps(_PLAIN["indexer"], protocol=protocol))["f"]) \
        is collections.defaultdict


@pytest.mark.parametrize("name", ["indexer", "emb"])
def test_unpickler_loads_protocol_2_plain_data(name):
    safe_pickle.loads(pickle.dumps(_PLAIN[name], protocol=2))


def _project_sources() -> list[Path]:
    skip = {"tests", "runs", ".git", ".cache", ".demo_data", ".benchmarks", ".hypothesis"}
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part in skip or part.startswith(".")
                             for part in p.relative_to(ROOT).parts[:-1]))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


_UNPICKLERS = ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "marshal.load",
               "marshal.loads", "dill.load", "joblib.load", "pd.read_pickle", "pandas.read_pickle",
               "yaml.load", "yaml.unsafe_load", "shelve.open")


def scan_source(text: str, name: str) -> tuple[list[str], int]:
    """-> (problems, number of torch.load calls) of one source file."""
    problems, torch_loads = [], 0
    for node, func in _calls(ast.parse(text, filename=name)):
        where = f"{name}:{node.lineno}: {func}(...)"
        kw = {k.arg: k.value for k in node.keywords}
        if func in ("eval", "exec", "builtins.eval", "builtins.exec", "compile"):
            problems.append(f"{where}: runs code from a string")
        elif func == "torch.load":
            torch_loads += 1
            value = kw.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                problems.append(f"{where}: torch.load without weights_only=True")
        elif func in _UNPICKLERS:
            problems.append(f"{where}: unpickling outside safe_pickle")
        elif func in ("np.load", "numpy.load"):
            value = kw.get("allow_pickle")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                problems.append(f"{where}: np.load with allow_pickle")
    if not name.endswith("safe_pickle.py") and re.search(r"\bUnpickler\b", text):
        problems.append(f"{name}: its own Unpickler")
    direct = r"from\s+(pickle|torch|marshal|builtins)\s+import\s+[^\n]*\b(load|loads|eval|exec)\b"
    if re.search(direct, text):
        problems.append(f"{name}: imports load/eval directly (calls the scan cannot see)")
    return problems, torch_loads


def test_static_no_eval_and_safe_loading():
    """No eval/exec/compile of strings, every torch.load with weights_only=True, and no
    unpickling outside safe_pickle's restricted unpickler (nor np.load(allow_pickle=True))."""
    files = _project_sources()
    assert ROOT / "main.py" in files and ROOT / "dataset.py" in files
    problems, torch_loads = [], 0
    for path in files:
        found, n = scan_source(path.read_text(), str(path.relative_to(ROOT)))
        problems += found
        torch_loads += n
    assert not problems, "\n".join(problems)
    assert torch_loads >= 1  # the scan does see checkpoint.load_checkpoint's call


@pytest.mark.parametrize("snippet", [
    "x = eval(s)", "exec(code)", "import builtins\nbuiltins.eval(s)",
    "torch.load(p)", "torch.load(p, weights_only=False)", "torch.load(p, weights_only=flag)",
    "pickle.load(f)", "pickle.loads(b)", "np.load(p, allow_pickle=True)",
    "from pickle import load", "class U(pickle.Unpickler): pass",
])
def test_static_scan_catches(snippet):
    problems, _ = scan_source(snippet, "snippet.py")
    assert problems, snippet


@pytest.mark.parametrize("snippet", [
    "model.eval()", "torch.load(p, map_location='cpu', weights_only=True)", "np.load(p)",
    "np.load(p, mmap_mode='r')", "re.compile('x')", "safe_pickle.load(p)", "pickle.dump(x, f)",
])
def test_static_scan_allows(snippet):
    assert scan_source(snippet, "snippet.py")[0] == [], snippet


# --------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("flag,value", [("--hidden_units", 32), ("--num_blocks", 2),
                                        ("--maxlen", 30), ("--num_heads", 2),
                                        ("--positions", "from_start")])
def test_checkpoint_of_another_configuration(trained, tmp_path, flag, value):
    """--positions changes no shape: only the saved flags can tell the weights do not fit."""
    argv = [*trained["argv"], "--resume", "--num_epochs", "2", flag, str(value)]
    with pytest.raises(checkpoint.CheckpointError) as e:
        run_main(argv)
    saved = json.loads((trained["ckpt"] / "config.json").read_text())["args"][flag[2:]]
    assert str(e.value) == (f"{trained['ckpt']}: made with {flag} {saved!r}, this run has "
                            f"{flag} {value!r}; pass the same value or another checkpoint")


def test_state_dict_path_of_another_configuration(trained, tmp_path):
    argv = [*trained["argv"], *_run_dirs(tmp_path)[:6], "--state_dict_path",
            str(trained["ckpt"]), "--num_blocks", "3", "--num_epochs", "2"]
    with pytest.raises(checkpoint.CheckpointError, match="--num_blocks 1.*--num_blocks 3"):
        run_main(argv)


def test_checkpoint_with_other_sparse_embeddings(trained):
    argv = [*trained["argv"], "--resume", "--num_epochs", "2", "--sparse_embeddings"]
    with pytest.raises(checkpoint.CheckpointError, match="--sparse_embeddings"):
        run_main(argv)


def test_unreadable_checkpoint(trained, tmp_path):
    bad = tmp_path / "epoch001_step000000001"
    shutil.copytree(trained["ckpt"], bad)
    data = (bad / "model.pt").read_bytes()
    (bad / "model.pt").write_bytes(data[:len(data) // 2])
    argv = [*trained["argv"], *_run_dirs(tmp_path)[:6], "--state_dict_path", str(bad)]
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(f"{bad / 'model.pt'}: "
                                                                   "unreadable checkpoint")):
        run_main(argv)


# --------------------------------------------------------------------------- 4. numerical guard

def test_non_finite_loss_names_the_step_and_keeps_the_checkpoint(trained, tmp_path, monkeypatch):
    """NaN from training step 7 (epoch 2 of 5 steps each): NonFiniteLoss names step 7, and the
    epoch-1 checkpoint is the only one, complete, loadable, with its config."""
    steps = trained["result"]["global_step"]
    assert steps == 5
    real, seen = train_step.compute_loss, [0]

    def nan_from_step_7(model, batch, args, amp_dtype):
        loss = real(model, batch, args, amp_dtype)
        if model.training:
            seen[0] += 1
            if seen[0] >= 7:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train_step, "compute_loss", nan_from_step_7)
    argv = [*trained["argv"], *_run_dirs(tmp_path)[:6], "--num_epochs", "3"]
    with pytest.raises(train_step.NonFiniteLoss, match=r"non-finite at step 7\b"):
        run_main(argv)
    (ckpt,) = (tmp_path / "ckpt").iterdir()
    assert ckpt.name == checkpoint.checkpoint_name(1, steps)
    assert checkpoint.latest_checkpoint(tmp_path / "ckpt") == ckpt
    saved = checkpoint.load_checkpoint(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    assert saved["config"] == config
    assert config["epoch"] == 1 and config["global_step"] == steps
    assert config["args"]["hidden_units"] == 16 and config["args"]["num_epochs"] == 3
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


# --------------------------------------------------------------------------- the processes

# Last in the file, so the background processes overlap everything above.

def test_cli_process_malformed_json(background):
    """A real process: exit status 2, one `error:` line naming the file and line."""
    run = background.result("bad_json")
    base = background.bad_json_base
    line = one_error_line(run["rc"], run["stderr"])
    assert line.startswith(f"error: {base / 'data' / 'seq.jsonl'}:2: invalid JSON"), line
    assert not (base / "cache").exists(), "a failed parse left a cache folder"
    assert not (base / "ckpt").exists()


def test_cli_process_checkpoint_of_another_configuration(background):
    run = background.result("other_config")
    ckpt = background.other_config["ckpt"]
    line = one_error_line(run["rc"], run["stderr"])
    assert line == (f"error: {ckpt}: made with --hidden_units 16, this run has "
                    "--hidden_units 32; pass the same value or another checkpoint"), line
    assert _mtimes(ckpt.parent) == background.other_config["before"], \
        "the refused resume touched the checkpoint folder"
