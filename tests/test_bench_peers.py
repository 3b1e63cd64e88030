"""bench.py's peer timing (benchmarks/peers.py) against a stand-in peer written here: a main.py that
takes pmixer/SASRec.pytorch's flags and prints its per-step lines, so no peer code is needed."""
from __future__ import annotations

import textwrap

import pytest

import bench
from benchmarks import peers as bench_peers
# Prints pmixer's step lines; records its argv and checks the data link it was given.
FAKE_MAIN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    assert Path("data/ml-1m.txt").read_text().startswith("1 1"), "data link"
    Path(sys.argv[0]).with_name("argv.txt").write_text(" ".join(sys.argv[1:]))
    epochs = int(sys.argv[sys.argv.index("--num_epochs") + 1])
    print("average sequence length: 2.00")
    for epoch in range(1, epochs + 1):
        for it in range(4):
            time.sleep(0.01)
            print(f"loss in epoch {epoch} iteration {it}: 0.5")
""")


@pytest.fixture
def fake_pmixer(tmp_path):
    folder = tmp_path / "python"
    folder.mkdir()
    (folder / "main.py").write_text(FAKE_MAIN)
    (folder / "model.py").write_text("")
    (folder / "utils.py").write_text("")
    data = tmp_path / "ml-1m.txt"
    data.write_text("1 1\n1 2\n2 1\n")
    return folder, data


def test_epoch_seconds_run_from_last_step_to_last_step():
    lines = [(1, 0, 10.0), (1, 1, 11.0), (2, 0, 12.5), (2, 1, 13.0), (3, 0, 13.5), (3, 1, 16.0)]
    durations, steps = bench_peers.epoch_seconds(lines)
    assert durations == [2.0, 3.0] and steps == 2  # 13-11, 16-13; epoch 1 (start-up) not counted


def test_pmixer_command_carries_the_bench_configuration():
    args = bench.parse_args(["--maxlen", "50", "--hidden_units", "32", "--norm_first"])
    cmd = bench_peers.pmixer_command(args, 3, "cpu")
    flags = dict(zip(cmd[3::2], cmd[4::2]))
    assert flags["--maxlen"] == "50" and flags["--hidden_units"] == "32"
    assert flags["--batch_size"] == "128" and flags["--dropout_rate"] == "0.2"  # paper defaults
    assert flags["--num_epochs"] == "3" and flags["--device"] == "cpu"
    assert cmd[-1] == "--norm_first"


def test_peer_folder_and_epochs_are_checked(tmp_path, fake_pmixer):
    with pytest.raises(SystemExit, match="missing main.py, model.py, utils.py"):
        bench.parse_args(["--peer_pmixer", str(tmp_path)])
    with pytest.raises(SystemExit, match="evaluates at epoch 20"):
        bench.parse_args(["--peer_pmixer", str(fake_pmixer[0]), "--peer_epochs", "20"])
    with pytest.raises(SystemExit, match="needs at least as many --steps"):
        bench.parse_args(["--peer_pmixer", str(fake_pmixer[0]), "--peer_rounds", "4",
                          "--steps", "3"])


def test_bench_times_the_peer_between_its_steps(demo_cache, fake_pmixer):
    folder, data = fake_pmixer
    result = bench.bench(["--demo", "--cache_dir", str(demo_cache), "--demo_users", "300",
                          "--demo_items", "200", "--maxlen", "10", "--hidden_units", "8",
                          "--num_blocks", "1", "--batch_size", "32", "--steps", "3",
                          "--warmup", "0", "--no-eval", "--device", "cpu", "--peak_size", "64",
                          "--peer_pmixer", str(folder), "--peer_data", str(data),
                          "--peer_epochs", "3", "--peer_rounds", "2"])
    peer = result["peers"][0]
    # 2 processes x (3 epochs - the first): 4 epochs of 4 steps of 32 sequences
    assert peer["timed_epochs"] == 4 and peer["sequences_per_epoch"] == 4 * 32
    assert all(0.03 < s < 5 for s in peer["epoch_seconds"])  # 4 sleeps of 10 ms, and printing
    key = f"speedup dense fp32 attn=fast vs {bench_peers.PMIXER_LABEL}"
    assert result["ratios"][key] == pytest.approx(result["train_seq_per_s"]
                                                  / peer["train_seq_per_s"])


def test_a_failing_peer_stops_the_run_with_its_error(tmp_path, fake_pmixer):
    folder, _ = fake_pmixer
    args = bench.parse_args([])
    with pytest.raises(SystemExit, match="--peer_data .*no such file"):
        bench_peers.PmixerPeer(folder, tmp_path / "absent.txt", args, 2, "cpu")
    other = tmp_path / "other.txt"
    other.write_text("9 9\n")  # the stand-in asserts it got the ML-1M-like file
    with pytest.raises(SystemExit, match="failed .exit 1.:(.|\n)*data link"):
        bench_peers.PmixerPeer(folder, other, args, 2, "cpu").run()
