"""Validation NDCG@10 per epoch of an ablation study: `python plot_curves.py --study OUT [--out PNG]`.

One line per configuration: the mean over its seeds at each evaluated epoch, shaded ± the sample
std where at least two seeds reached that epoch (early stopping ends seeds at different epochs).
A finished run's curve comes from its metrics.json history; an unfinished one's from the history
stored in its newest checkpoint, so a study can be watched while it runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from studies import folder

KEY = "valid_NDCG@10"


def run_history(run: folder.Run) -> list[dict]:
    """The run's per-epoch history ([] when it has not validated yet)."""
    if run.finished():
        return json.loads(run.metrics_path.read_text()).get("history", [])
    from run_files import checkpoint  # torch import: only for unfinished runs
    latest = checkpoint.latest_checkpoint(run.dir / "ckpt")
    if latest is None:
        return []
    config = json.loads((latest / checkpoint.CONFIG).read_text())
    return config.get("run_state", {}).get("history", [])


def curves(study_dir: Path) -> dict[str, dict]:
    """config -> {"epochs": [...], "mean": [...], "std": [...], "seeds": n} (std nan below 2)."""
    study = folder.load_study(study_dir)
    if study is None:
        raise SystemExit(f"error: {study_dir}: no study.json (not an ablation.py folder)")
    out = {}
    for config in study["configs"]:
        by_epoch: dict[int, list[float]] = {}
        seeds = 0
        for run in folder.plan_runs(study_dir, [config], study["seeds"]):
            points = [(h["epoch"], h[KEY]) for h in run_history(run) if KEY in h]
            seeds += bool(points)
            for epoch, value in points:
                by_epoch.setdefault(epoch, []).append(value)
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        out[config] = {"epochs": epochs, "seeds": seeds,
                       "mean": [statistics.fmean(by_epoch[e]) for e in epochs],
                       "std": [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1
                               else float("nan") for e in epochs]}
    return out


def plot(data: dict[str, dict], path: Path, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise SystemExit("error: plot_curves.py needs matplotlib (pip install matplotlib)") from None
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    for config, c in data.items():
        epochs, mean, std = np.array(c["epochs"]), np.array(c["mean"]), np.array(c["std"])
        line, = ax.plot(epochs, mean, marker="o", markersize=3, label=f"{config} ({c['seeds']} seeds)")
        # nan std (a single seed at that epoch) leaves a gap in the band, not a fake zero width
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid NDCG@10")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--study", required=True, help="the --out folder of ablation.py")
    p.add_argument("--out", default=None, help="image file (default: <study>/valid_ndcg.png)")
    args = p.parse_args(argv)
    study = Path(args.study)
    path = Path(args.out) if args.out else study / "valid_ndcg.png"
    data = curves(study)
    if not data:
        raise SystemExit(f"error: {study}: no run has a validation NDCG@10 yet")
    plot(data, path, "validation NDCG@10, mean ± std over seeds")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
