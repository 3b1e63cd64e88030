"""Crash safety end to end (requirement 3): a training process SIGKILLed mid-epoch (or in the
middle of writing a checkpoint) resumes from its last complete checkpoint and ends with exactly
the final metrics (and weights) of an uninterrupted run of the same command.

Killing at a wall-clock moment would be flaky on epochs of a tenth of a second, so the killed
runs go through a small wrapper around main.cli() that pauses at a chosen point (the Nth
training step, or right after the Nth torch.save of a checkpoint) and writes a marker file; the
test polls for the marker, checks what is on disk, and sends SIGKILL from outside. The resumed
runs are plain `python main.py ... --resume` / `--state_dict_path` processes. Everything runs on
the CPU with OMP_NUM_THREADS=1 and a fixed --seed; all folders are in pytest's tmp directories.

Process budget (each `python main.py` pays seconds of torch imports): four processes, the
reference concurrently with the chain interrupted-interrupted-finished, which covers a kill
inside a checkpoint save, a kill mid-epoch, `--state_dict_path` and `--resume`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from run_files import checkpoint
from conftest import ROOT

USERS, ITEMS, BATCH, EPOCHS = 600, 300, 64, 4
STEPS = -(-USERS // BATCH)  # leave_one_out trains on every user: 10 steps per epoch
KILL_STEP = 2 * STEPS + 4   # B pauses before the 4th step of epoch 3 (23 steps done)

HOOK = '''"""main.py (main.cli(), unchanged) with two optional hooks from the environment:
WAIT_FOR: a file to wait for before starting (the imports are already done by then);
PAUSE_AT: "train_step:N" (before the forward pass of training step N of this process) or
"save:N" (after torch.save wrote model.pt of checkpoint N, before its config.json): write
PAUSE_MARKER and sleep there - the test SIGKILLs the process while it waits."""
import os, sys, time
from pathlib import Path

sys.path.insert(0, os.environ["PROJECT_ROOT"])
from run_files import checkpoint
import main, torch
from training import step as train_step

count = 0


def pause():
    Path(os.environ["PAUSE_MARKER"]).write_text(str(count))
    time.sleep(600)


where, _, at = os.environ.get("PAUSE_AT", "").partition(":")
if where == "train_step":
    real_loss = train_step.compute_loss

    def compute_loss(model, batch, args, amp_dtype):
        global count
        if model.training:
            count += 1
            if count == int(at):
                pause()
        return real_loss(model, batch, args, amp_dtype)

    train_step.compute_loss = compute_loss
elif where == "save":
    real_save = torch.save

    def save(obj, f, *a, **kw):
        global count
        real_save(obj, f, *a, **kw)
        count += 1
        if count == int(at):
            pause()

    checkpoint.torch.save = save
if os.environ.get("WAIT_FOR"):
    while not os.path.exists(os.environ["WAIT_FOR"]):
        time.sleep(0.02)
sys.argv[0] = os.path.join(os.environ["PROJECT_ROOT"], "main.py")
sys.exit(main.cli())
'''


def _argv(cache: Path, base: Path) -> list[str]:
    return ["--demo_users", str(USERS), "--demo_items", str(ITEMS), "--maxlen", "20",
            "--hidden_units", "16", "--batch_size", str(BATCH), "--num_epochs", str(EPOCHS),
            "--eval_protocol", "leave_one_out", "--seed", "7", "--device", "cpu",
            "--keep_checkpoints", "0",  # every epoch kept: the test compares them all
            "--cache_dir", str(cache), "--log_dir", str(base / "logs"),
            "--tb_dir", str(base / "tb"), "--ckpt_dir", str(base / "ckpt")]


class Proc:
    """A main.py process with its output in files (no pipe to fill while it waits)."""

    def __init__(self, name: str, script: Path, argv: list[str], cwd: Path, **env):
        self.name, self.out = name, cwd / f"{name}.out"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_")}
        full_env.update(OMP_NUM_THREADS="1", PROJECT_ROOT=str(ROOT), **env)
        with open(self.out, "w") as out:
            self.popen = subprocess.Popen([sys.executable, str(script), *argv], cwd=cwd,
                                          env=full_env, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 240) -> int:
        return self.popen.wait(timeout=timeout)

    def output(self) -> str:
        return self.out.read_text()

    def wait_for(self, marker: Path, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert self.popen.poll() is None, f"{self.name} ended before pausing:\n{self.output()}"
            assert time.monotonic() < deadline, f"{self.name} never paused"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)


def _complete(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir()
                  if p.is_dir() and (p / "config.json").exists() and (p / "model.pt").exists())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The reference run, concurrently with one run interrupted twice:
    A: SIGKILL while epoch 2's checkpoint is half written (model.pt there, config.json not);
    B: `--state_dict_path <newest complete checkpoint>` (epoch 1), SIGKILL mid-epoch 3;
    C: `--resume` (finds epoch 2) to the end: main.cli() as `python main.py` runs it."""
    from dataset import load_dataset
    from demo_data import write_demo_dataset

    root = tmp_path_factory.mktemp("resume")
    cache = root / "cache"
    # main.py would generate the demo data here itself; doing it (and the parse cache) once up
    # front keeps concurrent processes from racing to write the same files.
    demo = cache / f"demo_u{USERS}_i{ITEMS}"
    write_demo_dataset(demo, num_users=USERS, num_items=ITEMS, seed=0)
    load_dataset(demo, cache_dir=cache)
    hook = root / "hooked_main.py"
    hook.write_text(HOOK)
    run_dir, ckpt_dir = root / "interrupted", root / "interrupted" / "ckpt"
    argv = _argv(cache, run_dir)

    procs, seen = [], {}
    epoch1 = ckpt_dir / _name(1)  # what B resumes from: A is killed while saving epoch 2

    def interrupt(proc: Proc) -> None:
        proc.wait_for(root / f"{proc.name}.paused")
        seen[proc.name] = {"complete": _complete(ckpt_dir),
                           "all": sorted(p.name for p in ckpt_dir.iterdir()),
                           "latest": checkpoint.latest_checkpoint(ckpt_dir)}
        proc.kill()
        seen[proc.name]["rc"] = proc.popen.returncode

    try:
        # All four start at once, so their seconds of imports overlap; B and C wait for a go.
        procs.append(Proc("reference", ROOT / "main.py", _argv(cache, root / "reference"), root))
        procs.append(Proc("A", hook, argv, root, PAUSE_AT="save:2",
                          PAUSE_MARKER=str(root / "A.paused")))
        procs.append(Proc("B", hook, [*argv, "--state_dict_path", str(epoch1)], root,
                          PAUSE_AT=f"train_step:{KILL_STEP - STEPS}",  # B starts at epoch 2
                          PAUSE_MARKER=str(root / "B.paused"), WAIT_FOR=str(root / "B.go")))
        procs.append(Proc("C", hook, [*argv, "--resume"], root, WAIT_FOR=str(root / "C.go")))
        ref, a, b, c = procs
        interrupt(a)
        (root / "B.go").touch()
        interrupt(b)
        (root / "C.go").touch()
        for proc in (c, ref):
            assert proc.wait() == 0, proc.output()
        outputs = {p.name: p.output() for p in procs}
    finally:
        for proc in procs:
            proc.kill()
    return {"root": root, "run_dir": run_dir, "seen": seen, "outputs": outputs,
            "state_dict_path": epoch1}


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "logs" / "metrics.json").read_text())


def _name(epoch: int) -> str:
    return checkpoint.checkpoint_name(epoch, epoch * STEPS)


def test_kill_mid_save_leaves_only_a_temporary_folder(runs):
    seen = runs["seen"]["A"]
    assert seen["rc"] == -signal.SIGKILL
    assert seen["complete"] == [_name(1)], seen
    (tmp,) = [n for n in seen["all"] if n != _name(1)]
    assert tmp.startswith(f".tmp-{_name(2)}"), seen
    assert seen["latest"] == runs["state_dict_path"]  # the half-written one is not picked


def test_kill_mid_epoch_leaves_the_completed_epochs(runs):
    seen = runs["seen"]["B"]
    assert seen["rc"] == -signal.SIGKILL
    assert seen["complete"] == [_name(1), _name(2)], seen  # and A's .tmp- leftover
    assert f"restored {runs['state_dict_path']} (epoch 1, step {STEPS})" in runs["outputs"]["B"]


def test_interrupted_twice_ends_like_the_uninterrupted_run(runs):
    root, run_dir = runs["root"], runs["run_dir"]
    log = runs["outputs"]["C"]
    assert f"restored {run_dir / 'ckpt' / _name(2)} (epoch 2, step {2 * STEPS})" in log, log
    ref, got = _metrics(root / "reference"), _metrics(run_dir)
    assert got["test"] == ref["test"]    # exactly: same seed, CPU, one thread
    assert got["valid"] == ref["valid"]
    assert got["best_epoch"] == ref["best_epoch"]
    assert Path(got["best_checkpoint"]).name == Path(ref["best_checkpoint"]).name
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(got["history"]) == strip(ref["history"])
    assert [e["epoch"] for e in got["history"]] == list(range(1, EPOCHS + 1))


def test_interrupted_twice_ends_with_the_same_weights(runs):
    root, run_dir = runs["root"], runs["run_dir"]
    assert _complete(run_dir / "ckpt") == _complete(root / "reference" / "ckpt") == \
        [_name(e) for e in range(1, EPOCHS + 1)]
    final = _name(EPOCHS)
    ref = checkpoint.load_checkpoint(root / "reference" / "ckpt" / final)
    got = checkpoint.load_checkpoint(run_dir / "ckpt" / final)
    assert ref["model"].keys() == got["model"].keys()
    for key, value in ref["model"].items():
        assert torch.equal(value, got["model"][key]), key
    assert got["optimizer"]["state"].keys() == ref["optimizer"]["state"].keys()
    for key, value in ref["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, got["optimizer"]["state"][key][name]), (key, name)
    assert got["sampler"] == ref["sampler"]


# --------------------------------------------------------------------------- a moved run folder

def test_resume_after_the_run_folder_moved(demo_dir, tmp_path):
    import logging
    import shutil

    import main as main_mod

    def run(base: Path, *extra: str) -> dict:
        argv = ["--data_dir", str(demo_dir), "--cache_dir", str(tmp_path / "cache"),
                "--maxlen", "20", "--hidden_units", "16", "--batch_size", "64",
                "--num_epochs", "1", "--eval_protocol", "leave_one_out", "--device", "cpu",
                "--log_dir", str(base / "logs"), "--tb_dir", str(base / "tb"),
                "--ckpt_dir", str(base / "ckpt"), *extra]
        root, saved = logging.getLogger(), logging.getLogger().handlers[:]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return main_mod.main(argv)
        finally:
            torch.set_num_threads(threads)
            for h in root.handlers[:]:
                if h not in saved:
                    root.removeHandler(h)
                    h.close()
            root.handlers[:] = saved

    first = run(tmp_path / "old")
    shutil.move(tmp_path / "old", tmp_path / "new")
    again = run(tmp_path / "new", "--resume")  # all epochs done: straight to the final test
    assert again["test"] == first["test"]
