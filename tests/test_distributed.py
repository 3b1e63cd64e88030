"""Two-process data-parallel training on CPU (gloo), launched as a user would with torchrun.

A small launcher script (written to tmp_path) runs `main.main(argv)` on every rank and then
saves that rank's final weights. main.main returns metrics, not the model, so the launcher
records the model main.py builds by wrapping `main.build_optimizer` (it receives the raw model;
DDP wraps the same module, so its parameters are the trained ones). After one epoch every rank
must hold identical weights, equal to the single checkpoint rank 0 wrote.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as tdist

from run_files import checkpoint
from conftest import ROOT

pytestmark = pytest.mark.skipif(
    not (tdist.is_available() and tdist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available")

USERS, ITEMS, BATCH = 200, 150, 32
TRAIN_USERS = USERS - round(USERS * 0.1)  # random_user split: 10% valid
STEPS = -(-(-(-TRAIN_USERS // 2)) // BATCH)  # each rank: ceil(ceil(180 / 2) / 32) = 3

LAUNCHER = """
import os, sys
import torch
import main

models = []
build_optimizer = main.build_optimizer

def spy(model, lr, *rest):
    models.append(model)
    return build_optimizer(model, lr, *rest)

main.build_optimizer = spy
main.main(sys.argv[2:])
state = {k: v.detach().cpu() for k, v in models[0].state_dict().items()}
torch.save(state, os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
"""


def test_two_ranks_train_one_epoch_in_step(tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    out = tmp_path / "weights"
    out.mkdir()
    argv = ["--demo_users", str(USERS), "--demo_items", str(ITEMS), "--maxlen", "10",
            "--hidden_units", "8", "--batch_size", str(BATCH), "--num_epochs", "1",
            "--device", "cpu", "--cache_dir", str(tmp_path / "cache"),
            "--eval_protocol", "random_user",  # the 90/10 split STEPS counts (the demo ranks)
            "--log_dir", str(tmp_path / "logs"), "--tb_dir", str(tmp_path / "tb"),
            "--ckpt_dir", str(tmp_path / "ckpt")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("TRAIN_DATA_PATH", "TRAIN_LOG_PATH", "TRAIN_TF_EVENTS_PATH", "TRAIN_CKPT_PATH"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(launcher), str(out), *argv],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    (ckpt,) = list((tmp_path / "ckpt").iterdir())  # one folder, no temporary left behind
    # each rank trained on half of the users: half the single-process step count
    assert ckpt.name == checkpoint.checkpoint_name(1, STEPS)
    saved = checkpoint.load_checkpoint(ckpt)["model"]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == saved.keys()
    for name, weight in saved.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between ranks"
        assert torch.equal(ranks[0][name], weight), f"{name} differs from the checkpoint"
