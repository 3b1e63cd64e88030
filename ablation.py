"""Ablation study of the conservative optimizations: every configuration x seed, one report.

`python ablation.py [--data_dir DIR] --seeds 3 --out OUT [--configs NAME ...] [--jobs N]
 [--report_only] [-- main.py training flags, e.g. --maxlen 200 --num_epochs 200 --patience 5]`

Each run is `python main.py` in its own subprocess (a crash stops that run, not the study) with
`--eval_protocol leave_one_out --seed k`, the SAME training flags for every configuration, its own
folders and one shared parse cache:

    OUT/study.json                       configurations, seeds, data, training flags, wall-clock
    OUT/cache/                           --cache_dir of every run (and the demo data, if no data)
    OUT/runs/<config>/seed<k>/{log,tb,ckpt}/, output.log (the run's stdout+stderr), run.json
    (each run's tb/ holds its own TensorBoard HParams entry: `tensorboard --logdir OUT` lists
     the runs as runs/<config>/seed<k>/tb, with their flags, seed and metrics)
    OUT/results.md, OUT/results.csv      mean ± std over seeds, difference with the baseline

A run whose log/metrics.json exists is finished and skipped; one with checkpoints but no
metrics.json was interrupted and resumes with --resume. main.py selects the epoch by valid
NDCG@10 (early stopping with --patience) and reports TEST metrics of that checkpoint, so this
script only aggregates: it never selects anything on test.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from training.cli_types import positive_int

log = logging.getLogger("ablation")
ROOT = Path(__file__).resolve().parent

ADAPTIVE_DCS = ["--use_adaptive_similarity", "--similarity_types", "dot", "cosine", "scaled"]
SMART_COUNTS = ["--use_smart_sampling", "--popularity_source", "counts"]
# Issue #13's study of objectives (docs/objectives.md); each is main.py's flags, the shared
# architecture flags go after "--".
SS = ["--loss", "sampled_softmax"]
SS1024 = SS + ["--num_negatives", "1024"]
COSINE_TAU = ["--similarity", "cosine", "--tau", "0.05"]
SMART = ["--negatives", "popularity"]  # the plan's smart share (--popular_ratio 0.3) of K
POPULAR = ["--negatives", "popularity", "--popular_ratio", "1"]  # every global draw by popularity
OBJECTIVE_CONFIGS: dict[str, list[str]] = {
    "bce": [],
    "gbce256": ["--loss", "gbce", "--num_negatives", "256", "--gbce_t", "0.75"],
    "ss_uniform1024": SS1024 + ["--negatives", "uniform"],
    "ss_uniform3000": SS + ["--num_negatives", "3000", "--negatives", "uniform"],
    "ss_inbatch_uniform_logq": SS1024 + ["--negatives", "uniform", "in_batch", "--logq_correction"],
    "ss_inbatch_uniform_nologq": SS1024 + ["--negatives", "uniform", "in_batch",
                                           "--no-logq_correction"],
    "full_softmax": ["--loss", "full_softmax"],
    "ss_uniform1024_cosine_tau": SS1024 + ["--negatives", "uniform"] + COSINE_TAU,
    "ss_inbatch_uniform_logq_cosine_tau": SS1024 + ["--negatives", "uniform", "in_batch",
                                                    "--logq_correction"] + COSINE_TAU,
    "full_softmax_cosine_tau": ["--loss", "full_softmax"] + COSINE_TAU,
    "ss_uniform1024_adaptive": SS1024 + ["--negatives", "uniform"] + ADAPTIVE_DCS,
    "full_softmax_adaptive": ["--loss", "full_softmax"] + ADAPTIVE_DCS,
    "ss_smart1024_logq": SS1024 + SMART + ["--logq_correction"],
    "ss_smart1024_nologq": SS1024 + SMART + ["--no-logq_correction"],
    "ss_popular1024_logq": SS1024 + POPULAR + ["--logq_correction"],
    "ss_popular1024_nologq": SS1024 + POPULAR + ["--no-logq_correction"],
    "ss_uniform1024_mask_history": SS1024 + ["--negatives", "uniform", "--mask_history"],
    "full_softmax_mask_history": ["--loss", "full_softmax", "--mask_history"],
}
# name -> the main.py flags that make the configuration; feeds --configs choices=. Everything not
# named here keeps main.py's default (popular_ratio 0.3, popularity_factor 0.75, ...), so e.g.
# smart_powerlaw differs from smart_counts in the popularity source alone (1 / item_id ** 0.75).
CONFIGS: dict[str, list[str]] = {
    "baseline": [],
    "adaptive_dc": ["--use_adaptive_similarity", "--similarity_types", "dot", "cosine"],
    "adaptive_dcs": ADAPTIVE_DCS,
    "adaptive_dcsb": ["--use_adaptive_similarity", "--similarity_types",
                      "dot", "cosine", "scaled", "bilinear"],
    "smart_counts": SMART_COUNTS,
    "smart_powerlaw": ["--use_smart_sampling", "--popularity_source", "power_law"],
    "adaptive_smart": ADAPTIVE_DCS + SMART_COUNTS,
    "adaptive_smart_curriculum": ADAPTIVE_DCS + SMART_COUNTS
                                 + ["--popular_ratio_schedule", "linear"],
    **OBJECTIVE_CONFIGS,
}
PLAN_CONFIGS = [c for c in CONFIGS if c not in OBJECTIVE_CONFIGS]
BASELINE = "baseline"
# The reference of the comparisons: the first of these with finished runs ("bce" is the
# baseline under its objective-study name).
REFERENCES = (BASELINE, "bce")
# main.py flags this script sets per run; passing them after "--" is an error.
RESERVED = ("data_dir", "seed", "log_dir", "tb_dir", "ckpt_dir", "cache_dir", "eval_protocol",
            "resume", "state_dict_path", "inference_only")
# Reported per configuration: (csv/markdown name, where it comes from in a run's summary).
REPORTED = ("HR@10", "NDCG@10", "MRR", "AUC", "score", "seconds_per_epoch", "best_epoch")
COMPARED = ("NDCG@10", "HR@10")
VERDICT_NONE = "no measurable difference"  # evaluation.md's wording, printed verbatim


class StudyError(Exception):
    """A study that cannot start or be reported as asked; the message says why."""


# --------------------------------------------------------------------------- flags

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        usage="%(prog)s [options] [-- main.py training flags]",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="study folder (runs, cache, results)")
    p.add_argument("--data_dir", default=None,
                   help="V1 data directory for every run; none: main.py's default (TRAIN_DATA_PATH, "
                        "else the built-in demo dataset: pass --demo_users/--demo_items after --)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per configuration")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=PLAN_CONFIGS,
                   metavar="NAME", help=f"configurations to run (default: the plan's, the "
                                        f"first {len(PLAN_CONFIGS)}), of: {' '.join(CONFIGS)}")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="runs at once; each gets OMP_NUM_THREADS = cores // jobs unless it is set")
    p.add_argument("--report_only", action="store_true",
                   help="train nothing: rewrite results.md/csv from the finished runs")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Own flags before "--", main.py's training flags after it (args.train_flags)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args = parser.parse_args(argv[:cut])
    args.train_flags = argv[cut + 1:]
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1")
    args.configs = list(dict.fromkeys(args.configs))  # repeated names: once, in the given order
    args.out = Path(args.out).resolve()
    if args.data_dir is not None:
        args.data_dir = str(Path(args.data_dir).resolve())
    return args


def check_train_flags(train_flags: list[str], configs: list[str]) -> None:
    """Fail before any run starts when main.py would reject a run's flags, when a training flag is
    one this script sets, or when it changes what a configuration sets (then the baseline would
    not be the baseline). Parsing with main.py's own parser also catches abbreviations."""
    from training.flags import parse_args  # torch import: only when a study is (re)started

    def parse(flags: list[str], what: str) -> dict:
        try:
            return vars(parse_args(flags))
        except SystemExit:
            raise StudyError(f"main.py rejects the flags of {what}: {' '.join(flags)} "
                             "(its message is above)") from None

    defaults = parse([], "no flags")
    given = parse(train_flags, "the training flags")
    owned = {k for name in CONFIGS for k, v in parse(CONFIGS[name], name).items()
             if v != defaults[k]}
    for key in (*RESERVED, *sorted(owned)):
        if given[key] != defaults[key]:
            who = "this script sets it per run" if key in RESERVED else "a configuration sets it"
            raise StudyError(f"--{key} after '--': {who}; remove it from the training flags")
    for name in configs:
        parse(train_flags + CONFIGS[name], f"configuration {name!r}")


# --------------------------------------------------------------------------- study folder

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


# --------------------------------------------------------------------------- running

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
                 _clock(seconds), test["NDCG@10"], test["HR@10"])
        return True
    log.error("FAILED %s (exit %s) after %s: %s | %s", run.name, returncode, _clock(seconds),
              run.dir / "output.log", _last_line(run.dir / "output.log"))
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


# --------------------------------------------------------------------------- results

def summarize_run(run: Run) -> dict | None:
    """A finished run's numbers for the report (None when it is not finished)."""
    if not run.finished():
        return None
    m = json.loads(run.metrics_path.read_text())
    epochs = [h["seconds"] for h in m.get("history", [])]
    out = {k: float(m["test"][k]) for k in ("HR@10", "NDCG@10", "MRR", "AUC", "score")}
    out.update(seconds_per_epoch=statistics.fmean(epochs) if epochs else math.nan,
               best_epoch=float(m["best_epoch"]), epochs_run=len(epochs),
               train_seconds=sum(epochs), valid_NDCG10=float(m["valid"]["NDCG@10"]),
               protocol=m["test"].get("protocol", "?"), run_seconds=run_seconds(run))
    return out


def run_seconds(run: Run) -> float:
    """Wall-clock of every attempt of the run (training, evaluation and startup)."""
    if not run.record_path.exists():
        return 0.0
    return sum(a["seconds"] for a in json.loads(run.record_path.read_text())["attempts"])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and SAMPLE standard deviation (n-1); std is nan below two values."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def aggregate(runs: list[Run], configs: list[str], seeds: int) -> list[dict]:
    """One row per configuration: mean/std of REPORTED over its finished seeds."""
    rows = []
    for config in configs:
        done = [s for r in runs if r.config == config and (s := summarize_run(r))]
        row = {"config": config, "seeds_finished": len(done), "seeds_planned": seeds,
               "run_seconds": sum(run_seconds(r) for r in runs if r.config == config)}
        for key in REPORTED:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([d[key] for d in done])
        rows.append(row)
    add_comparison(rows)
    return rows


def add_comparison(rows: list[dict]) -> None:
    """Difference of each configuration's mean with the baseline's. It counts only when it
    exceeds two standard deviations, taking the larger of the two configurations' seed std
    (the conservative choice); otherwise it is "no measurable difference"."""
    base = next((r for name in REFERENCES for r in rows
                 if r["config"] == name and r["seeds_finished"]), None)
    for row in rows:
        for key in COMPARED:
            delta = threshold = math.nan
            if row is base or (base is None and row["config"] in REFERENCES):
                verdict = "reference"
            elif base is None or not row["seeds_finished"]:
                verdict = "n/a (no finished runs)" if base else "n/a (no baseline runs)"
            else:
                delta = row[f"{key}_mean"] - base[f"{key}_mean"]
                threshold = 2 * max(row[f"{key}_std"], base[f"{key}_std"])
                verdict = judge(delta, threshold)
            row[f"delta_{key}"], row[f"threshold_{key}"], row[f"verdict_{key}"] = \
                delta, threshold, verdict


def judge(delta: float, threshold: float) -> str:
    if math.isnan(threshold):
        return "n/a (needs >= 2 seeds)"
    if abs(delta) > threshold:
        return "better (> 2 std)" if delta > 0 else "worse (> 2 std)"
    return VERDICT_NONE


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _pm(row: dict, key: str, digits: int = 4) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {'n/a' if math.isnan(std) else f'{std:.{digits}f}'}"


def _versus(row: dict, key: str) -> str:
    delta = row[f"delta_{key}"]
    return row[f"verdict_{key}"] if math.isnan(delta) else f"{delta:+.4f} {row[f'verdict_{key}']}"


def results_markdown(study: dict, rows: list[dict], runs: list[Run], failed: list[str],
                     out: Path) -> str:
    summaries = {r.name: summarize_run(r) for r in runs}
    protocols = sorted({s["protocol"] for s in summaries.values() if s})
    data = data_description(runs)
    wall = sum(i["seconds"] for i in study["invocations"])
    lines = [
        f"# Ablation study: {out}", "",
        "Leave-one-out, ranking protocol " + (", ".join(protocols) or "?") + "; each run's epoch is "
        "chosen by valid NDCG@10 (early stopping), the numbers are TEST metrics of that "
        "checkpoint. mean ± sample std (n-1) over the finished seeds.", "",
        f"- data: {data}",
        f"- training flags, the same for every run: `{' '.join(study['train_flags']) or '(defaults)'}`",
        f"- budget: {_clock(sum(r['run_seconds'] for r in rows))} of run wall-clock "
        f"(all runs and attempts), {_clock(wall)} of study wall-clock over "
        f"{len(study['invocations'])} invocation(s)", "",
        "| config | seeds | HR@10 | NDCG@10 | MRR | AUC | score | s/epoch | best epoch "
        "| vs baseline NDCG@10 | vs baseline HR@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['config']} | {row['seeds_finished']}/{row['seeds_planned']} | "
                     + " | ".join(_pm(row, k) for k in ("HR@10", "NDCG@10", "MRR", "AUC", "score"))
                     + f" | {_pm(row, 'seconds_per_epoch', 2)} | {_pm(row, 'best_epoch', 1)} | "
                     f"{_versus(row, 'NDCG@10')} | {_versus(row, 'HR@10')} |")
    lines += ["", "A difference with the baseline counts only when it exceeds two standard "
              "deviations (the larger of the two configurations' seed std); a smaller one is "
              f'"{VERDICT_NONE}".', ""]
    lines += run_table(runs, summaries) + configs_section(study, rows)
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r.name}: `{r.dir / 'output.log'}`"
                                                     for r in runs if r.name in failed]
    return "\n".join(lines) + "\n"


def data_description(runs: list[Run]) -> str:
    """The data the runs actually read (main.py resolves the default), from their args.json."""
    seen = set()
    for run in runs:
        path = run.dir / "log" / "args.json"
        if path.exists():
            a = json.loads(path.read_text())
            seen.add(a["data_dir"] or f"built-in demo data ({a['demo_users']} users, "
                                      f"{a['demo_items']} items)")
    if not seen:
        return "(no run has started)"
    return " / ".join(sorted(seen)) + ("" if len(seen) == 1 else "  ** NOT THE SAME DATA **")


def run_table(runs: list[Run], summaries: dict) -> list[str]:
    lines = ["## Runs", "", "| run | test NDCG@10 | test HR@10 | valid NDCG@10 | best epoch "
             "| epochs | s/epoch | wall-clock |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        s = summaries[r.name]
        if s is None:
            lines.append(f"| {r.name} | not finished | | | | | | {_clock(run_seconds(r))} |")
            continue
        lines.append(f"| {r.name} | {s['NDCG@10']:.4f} | {s['HR@10']:.4f} | "
                     f"{s['valid_NDCG10']:.4f} | {s['best_epoch']:.0f} | {s['epochs_run']} | "
                     f"{s['seconds_per_epoch']:.2f} | {_clock(s['run_seconds'])} |")
    return lines


def configs_section(study: dict, rows: list[dict]) -> list[str]:
    lines = ["", "## Configurations", ""]
    for row in rows:
        flags = " ".join(study["configs"][row["config"]]) or "(main.py defaults)"
        lines.append(f"- {row['config']}: `{flags}`")
    return lines


def report(out: Path, study: dict, configs: list[str], failed: list[str] = ()) -> list[dict]:
    runs = plan_runs(out, configs, study["seeds"])
    rows = aggregate(runs, configs, study["seeds"])
    write_csv(out / "results.csv", rows)
    (out / "results.md").write_text(results_markdown(study, rows, runs, list(failed), out))
    log.info("wrote %s and %s", out / "results.md", out / "results.csv")
    return rows


# --------------------------------------------------------------------------- main

class _TqdmHandler(logging.StreamHandler):
    """Log lines above the progress bar instead of through it."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers = [_TqdmHandler(), logging.FileHandler(out / "study.log")]
    for h in handlers:
        h.setFormatter(fmt)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)


def main(argv: list[str] | None = None) -> dict:
    """Run (unless --report_only) and report; returns {"rows": per-config rows, "failed": names}."""
    args = parse_args(argv)
    setup_logging(args.out)
    if args.report_only:
        study = load_study(args.out)
        if study is None:
            raise StudyError(f"{args.out}: no study.json: nothing to report")
        configs = [c for c in args.configs if c in study["configs"]]
        if not configs:
            raise StudyError(f"{args.out} has none of the configurations {args.configs}")
        return {"rows": report(args.out, study, configs), "failed": []}
    with study_lock(args.out):
        return run_study(args)


def run_study(args) -> dict:
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise StudyError(f"--data_dir {args.data_dir}: no such directory")
    check_train_flags(args.train_flags, args.configs)
    study = merge_study(load_study(args.out), args)
    started, failed = time.time(), []
    study["invocations"].append({"started": started, "seconds": 0.0})
    save_study(args.out, study)
    runs = plan_runs(args.out, args.configs, args.seeds)
    try:
        if args.jobs > 1 and not all(r.finished() for r in runs):
            prepare_data(args)
        failed = [r.name for r in run_all(runs, args)]
    finally:
        study["invocations"][-1]["seconds"] = time.time() - started
        save_study(args.out, study)
    log.info("study time this call: %s; %d failed", _clock(time.time() - started), len(failed))
    # The report covers every configuration of the folder, also those of earlier calls.
    return {"rows": report(args.out, study, list(study["configs"]), failed), "failed": failed}


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _last_line(path: Path) -> str:
    lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else "(no output)"


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # a scheduler's SIGTERM stops the runs the way Ctrl-C does


def cli() -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        result = main()
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(cli())
