"""Peers timed in bench.py's run: pmixer/SASRec.pytorch's own training loop, per epoch.

The peer is not a dependency and none of its code is in this project: point bench.py's
--peer_pmixer at the python/ folder of a checkout (git clone
https://github.com/pmixer/SASRec.pytorch). Its main.py runs unmodified, as a subprocess, in a
temporary copy of that folder whose data/ml-1m.txt links to --peer_data, with bench's
architecture flags (maxlen, hidden units, blocks, heads, dropout, batch size, learning rate).

Timing: its loop prints one line per step ("loss in epoch E iteration I: ..."). The time each
line arrives (unbuffered, python -u) marks the end of that step, so one epoch is the time between
the last step of the epoch before and its own last step. The first epoch of each process (start-up,
index building, sampler processes spinning up) is not counted. Its sequences per epoch are its
steps times the batch size (it samples users per batch: 48 x 128 = 6,144 on ML-1M). Its own
evaluation runs every 20 epochs, so a process runs at most 19.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PMIXER_FILES = ("main.py", "model.py", "utils.py")
PMIXER_LABEL = "pmixer/SASRec.pytorch fp32"
MAX_EPOCHS = 19  # its main.py evaluates at epoch 20
STEP_LINE = re.compile(rb"loss in epoch (\d+) iteration (\d+):")


def check_pmixer_dir(path: str) -> Path:
    """The checkout's python/ folder, or SystemExit saying what is missing."""
    folder = Path(path).expanduser()
    missing = [name for name in PMIXER_FILES if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f"error: --peer_pmixer {path}: expected the python/ folder of a "
                         f"pmixer/SASRec.pytorch checkout, missing {', '.join(missing)}")
    return folder


def pmixer_command(args, epochs: int, device: str) -> list[str]:
    """Its main.py's flags for bench's configuration (its names are ours, from the baseline).
    Its default block is our --block sasrec and its --norm_first our pre_ln; our post_ln has no
    counterpart there, so like-for-like timing passes --block sasrec or pre_ln to bench."""
    cmd = [sys.executable, "-u", "main.py", "--dataset", "ml-1m", "--train_dir", "bench",
           "--device", device, "--num_epochs", str(epochs)]
    for flag in ("batch_size", "lr", "maxlen", "hidden_units", "num_blocks", "num_heads",
                 "dropout_rate"):
        cmd += [f"--{flag}", str(getattr(args, flag))]
    if getattr(args, "norm_first", False):
        cmd.append("--norm_first")
    return cmd


def epoch_seconds(step_times: list[tuple[int, int, float]]) -> tuple[list[float], int]:
    """(epoch, iteration, arrival time) of every step line -> (durations of epochs 2.., steps
    per epoch). An epoch's duration runs from the previous epoch's last step to its own."""
    last: dict[int, float] = {}
    steps = 0
    for epoch, iteration, t in step_times:
        last[epoch] = t
        steps = max(steps, iteration + 1)
    epochs = sorted(last)
    return [last[e] - last[p] for p, e in zip(epochs, epochs[1:])], steps


class PmixerPeer:
    """Runs the peer for `epochs` epochs per call to run(); collects the timed epochs."""

    def __init__(self, folder: Path, data_file: Path, args, epochs: int, device: str):
        if not data_file.is_file():
            raise SystemExit(f"error: --peer_data {data_file}: no such file (the 'user item' "
                             "lines pmixer reads, e.g. ../shared/data/ml-1m/sasrec/ml-1m.txt)")
        self.folder, self.data_file, self.args = folder, data_file, args
        self.epochs, self.device = epochs, device
        self.durations: list[float] = []
        self.steps_per_epoch = 0

    def run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="bench-pmixer-") as tmp:
            work = Path(tmp)
            for name in PMIXER_FILES:
                shutil.copy2(self.folder / name, work / name)
            (work / "data").mkdir()
            (work / "data" / "ml-1m.txt").symlink_to(self.data_file.resolve())
            proc = subprocess.Popen(pmixer_command(self.args, self.epochs, self.device), cwd=work,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            step_times = []
            for line in proc.stdout:  # one line per step, read as it arrives
                match = STEP_LINE.match(line)
                if match:
                    step_times.append((int(match[1]), int(match[2]), time.perf_counter()))
            stderr = proc.stderr.read().decode(errors="replace")
            if proc.wait() != 0:
                raise SystemExit(f"error: pmixer/SASRec.pytorch failed (exit {proc.returncode}):"
                                 f"\n{stderr[-2000:]}")
        durations, steps = epoch_seconds(step_times)
        self.durations += durations
        self.steps_per_epoch = steps

    def summary(self) -> dict:
        if not self.durations:
            raise SystemExit("error: pmixer/SASRec.pytorch printed no timed epoch")
        epoch_s = float(np.median(self.durations))
        seqs = self.steps_per_epoch * self.args.batch_size
        return {"label": PMIXER_LABEL, "timed_epochs": len(self.durations),
                "epoch_seconds": self.durations, "epoch_s_median": epoch_s,
                "sequences_per_epoch": seqs, "train_seq_per_s": seqs / epoch_s}


def peer_ratios(summaries: list[dict], peer: dict) -> dict[str, float]:
    """Each of our configurations' training throughput over the peer's."""
    return {f"speedup {s['label']} vs {peer['label']}": s["train_seq_per_s"] / peer["train_seq_per_s"]
            for s in summaries}
