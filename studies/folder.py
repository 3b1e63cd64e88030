"""A study folder: its runs' folders, study.json (what the study is) and each run's run.json (its
attempts and their wall-clock)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from studies.configs import CONFIGS, StudyError


@dataclass
class Run:
    """One configuration x seed and its folders."""
    config: str
    seed: int
    dir: Path

    @property
    def name(self) -> str:
        return f"{self.config}_seed{self.seed}"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "log" / "metrics.json"

    @property
    def record_path(self) -> Path:
        return self.dir / "run.json"

    def finished(self) -> bool:
        return self.metrics_path.exists()


def run_dir(out: Path, config: str, seed: int) -> Path:
    return Path(out) / "runs" / config / f"seed{seed}"


def plan_runs(out: Path, configs: list[str], seeds: int) -> list[Run]:
    """Seed-major order: a study cut short still has every configuration at its first seeds."""
    return [Run(c, s, run_dir(out, c, s)) for s in range(seeds) for c in configs]


def load_study(out: Path) -> dict | None:
    path = Path(out) / "study.json"
    return json.loads(path.read_text()) if path.exists() else None


def save_study(out: Path, study: dict) -> None:
    path = Path(out) / "study.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(study, indent=2))
    os.replace(tmp, path)


def merge_study(old: dict | None, args) -> dict:
    """The study record with this invocation's configurations and seeds added. Data and training
    flags must be those the folder was started with: same data, same budget for every run."""
    new = {"data_dir": args.data_dir, "train_flags": args.train_flags,
           "configs": {c: CONFIGS[c] for c in args.configs}, "seeds": args.seeds,
           "invocations": []}
    if old is None:
        return new
    for key in ("data_dir", "train_flags"):
        if old[key] != new[key]:
            raise StudyError(f"{args.out} was started with {key} {old[key]!r}, this call has "
                             f"{new[key]!r}: every run of a study must share them; use another --out")
    for name, flags in new["configs"].items():
        if name in old["configs"] and old["configs"][name] != flags:
            raise StudyError(f"configuration {name!r} was {old['configs'][name]} in {args.out} "
                             f"and is {flags} now; use another --out")
    configs = {**old["configs"], **new["configs"]}
    return {**old, "configs": {c: configs[c] for c in CONFIGS if c in configs},
            "seeds": max(old["seeds"], new["seeds"])}


@contextlib.contextmanager
def study_lock(out: Path):
    """One training invocation per study folder: two would start the same runs twice."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "study.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StudyError(f"another ablation.py is running on {out}") from None
        yield


def run_seconds(run: Run) -> float:
    """Wall-clock of every attempt of the run (training, evaluation and startup)."""
    if not run.record_path.exists():
        return 0.0
    return sum(a["seconds"] for a in json.loads(run.record_path.read_text())["attempts"])



def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
