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
import logging
import signal
import sys
import time
from pathlib import Path

from tqdm import tqdm

from studies.configs import CONFIGS, PLAN_CONFIGS, StudyError, check_train_flags
from studies.folder import clock, load_study, merge_study, plan_runs, save_study, study_lock
from studies.jobs import prepare_data, run_all
from studies.report import report
from training.cli_types import positive_int

log = logging.getLogger("ablation")


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
    log.info("study time this call: %s; %d failed", clock(time.time() - started), len(failed))
    # The report covers every configuration of the folder, also those of earlier calls.
    return {"rows": report(args.out, study, list(study["configs"]), failed), "failed": failed}


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
