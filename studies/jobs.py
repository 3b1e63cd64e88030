"""The study's main.py runs: each in its own subprocess, N at a time, resumed from its last
checkpoint after a crash or an interrupt."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from studies.configs import CONFIGS
from studies.folder import Run, clock

log = logging.getLogger("ablation")
ROOT = Path(__file__).resolve().parent.parent  # main.py's folder


def run_command(run: Run, args, resume: bool) -> list[str]:
    """The main.py command line: data, shared training flags, configuration, this run's own."""
    cmd = [sys.executable, str(ROOT / "main.py")]
    if args.data_dir is not None:
        cmd += ["--data_dir", args.data_dir]
    cmd += [*args.train_flags, *CONFIGS[run.config],
            "--eval_protocol", "leave_one_out", "--seed", str(run.seed),
            "--log_dir", str(run.dir / "log"), "--tb_dir", str(run.dir / "tb"),
            "--ckpt_dir", str(run.dir / "ckpt"), "--cache_dir", str(args.out / "cache")]
    return cmd + (["--resume"] if resume else [])


def has_checkpoint(run: Run) -> bool:
    from run_files import checkpoint  # torch import: only when runs start
    return checkpoint.latest_checkpoint(run.dir / "ckpt") is not None


def job_env(jobs: int) -> dict[str, str]:
    """N runs at once share the cores: without a cap each torch would start one thread per
    core and they would fight over them. An OMP_NUM_THREADS set by the user wins."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        env["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // jobs))
    return env


@dataclass
class Job:
    run: Run
    proc: subprocess.Popen
    output: object
    started: float = field(default_factory=time.time)


def start(run: Run, args, env: dict) -> Job:
    resume = has_checkpoint(run)
    run.dir.mkdir(parents=True, exist_ok=True)
    cmd = run_command(run, args, resume)
    output = open(run.dir / "output.log", "a")
    output.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
    output.flush()
    # stdin closed: a run never waits on the terminal; cwd unchanged so relative flags hold; its
    # own session so a terminal Ctrl-C reaches only this script, which then stops it once (stop).
    proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    log.info("start %s%s", run.name, " (resuming from its last checkpoint)" if resume else "")
    return Job(run, proc, output)


def record_attempt(job: Job, returncode: int) -> float:
    """Append this attempt (wall-clock seconds, exit status) to the run's run.json."""
    seconds = time.time() - job.started
    path = job.run.record_path
    record = json.loads(path.read_text()) if path.exists() else {"attempts": []}
    record["attempts"].append({"started": job.started, "seconds": seconds,
                               "returncode": returncode, "command": job.proc.args})
    path.write_text(json.dumps(record, indent=2))
    job.output.close()
    return seconds


def finish(job: Job, returncode: int) -> bool:
    seconds = record_attempt(job, returncode)
    run = job.run
    if returncode == 0 and run.finished():
        test = json.loads(run.metrics_path.read_text())["test"]
        log.info("done  %s in %s: test NDCG@10 %.4f, HR@10 %.4f", run.name,
                 clock(seconds), test["NDCG@10"], test["HR@10"])
        return True
    log.error("FAILED %s (exit %s) after %s: %s | %s", run.name, returncode, clock(seconds),
              run.dir / "output.log", last_line(run.dir / "output.log"))
    return False


def run_all(runs: list[Run], args) -> list[Run]:
    """Run the unfinished runs, args.jobs at a time; returns the ones that failed."""
    todo = [r for r in runs if not r.finished()]
    for r in runs:
        if r.finished():
            log.info("skip  %s: finished (%s)", r.name, r.metrics_path)
    if not todo:
        return []
    env, running, failed = job_env(args.jobs), [], []
    log.info("%d runs to do, %d at once, OMP_NUM_THREADS=%s", len(todo), args.jobs,
             env["OMP_NUM_THREADS"])
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="runs", unit="run",
               dynamic_ncols=True)
    try:
        while todo or running:
            while todo and len(running) < args.jobs:
                running.append(start(todo.pop(0), args, env))
            time.sleep(0.1)
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                if not finish(job, job.proc.returncode):
                    failed.append(job.run)
                bar.update(1)
    except KeyboardInterrupt:
        stop(running)
        raise
    finally:
        bar.close()
    return failed


def stop(running: list[Job], grace_s: float = 15.0) -> None:
    """Ctrl-C / SIGTERM: main.py takes SIGINT as 'interrupted, resume with --resume'; one that
    ignores it (started with SIGINT ignored) is terminated. Checkpoints are written atomically,
    so either way the next call of this script resumes the run from its last checkpoint."""
    for send in (lambda p: p.send_signal(signal.SIGINT), subprocess.Popen.terminate,
                 subprocess.Popen.kill):
        for job in running:
            if job.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    send(job.proc)
        deadline = time.time() + grace_s
        while time.time() < deadline and any(j.proc.poll() is None for j in running):
            time.sleep(0.1)
    for job in running:
        record_attempt(job, job.proc.wait())
        log.warning("interrupted %s: the next call resumes it", job.run.name)


def prepare_data(args) -> None:
    """With several jobs, parse the data (and write the demo) once before they start, so they do
    not all parse it at the same time. main.py's own functions: the same paths and cache keys."""
    from training.flags import parse_args
    from training.setup import load_data
    flags = [*(["--data_dir", args.data_dir] if args.data_dir else []), *args.train_flags,
             "--cache_dir", str(args.out / "cache")]
    load_data(parse_args(flags))


def last_line(path: Path) -> str:
    lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else "(no output)"
