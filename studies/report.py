"""The study's report: per-configuration mean ± std over seeds, the difference with the
baseline and its verdict, as results.md and results.csv."""
from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from pathlib import Path

from studies.configs import COMPARED, REFERENCES, REPORTED, VERDICT_NONE
from studies.folder import Run, clock, plan_runs, run_seconds

log = logging.getLogger("ablation")


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
        f"- budget: {clock(sum(r['run_seconds'] for r in rows))} of run wall-clock "
        f"(all runs and attempts), {clock(wall)} of study wall-clock over "
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
            lines.append(f"| {r.name} | not finished | | | | | | {clock(run_seconds(r))} |")
            continue
        lines.append(f"| {r.name} | {s['NDCG@10']:.4f} | {s['HR@10']:.4f} | "
                     f"{s['valid_NDCG10']:.4f} | {s['best_epoch']:.0f} | {s['epochs_run']} | "
                     f"{s['seconds_per_epoch']:.2f} | {clock(s['run_seconds'])} |")
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
