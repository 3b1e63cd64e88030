"""bench.py's printed table and the ratios between its configurations."""
from __future__ import annotations

def ratios(summaries: list[dict]) -> dict[str, float]:
    """Step-time ratio of every configuration to the first, and the speed-up along each
    compared axis (configurations that differ in that one word of their labels)."""
    base = summaries[0]["step_ms_median"]
    out = {f"step_time {s['label']} / {summaries[0]['label']}": s["step_ms_median"] / base
           for s in summaries[1:]}
    by_words = {tuple(s["label"].split()): s["step_ms_median"] for s in summaries}
    for slow, fast in (("attn=sdpa", "attn=fast"), ("attn=fast_full", "attn=fast"),
                       ("attn=autograd", "attn=fast"),
                       ("fp32", "bf16"), ("dense", "sparse")):
        for words, ms in by_words.items():
            if fast in words:
                other = tuple(slow if w == fast else w for w in words)
                if other in by_words:
                    rest = " ".join(w for w in words if w != fast)
                    out[f"speedup {fast} vs {slow} ({rest})"] = by_words[other] / ms
    for words, ms in by_words.items():  # compiled against the same configuration in eager
        eager = tuple(w for w in words if w != "compiled")
        if eager != words and eager in by_words:
            out[f"speedup compiled vs eager ({' '.join(eager)})"] = by_words[eager] / ms
    sizes = [w for w in summaries[0]["label"].split() if w.startswith("items=")]
    for words, ms in by_words.items():  # catalogue scaling: each size against the first
        if sizes and words[0] != sizes[0]:
            base_words = (sizes[0], *words[1:])
            if base_words in by_words:
                out[f"step_time {words[0]} / {sizes[0]} ({' '.join(words[1:])})"] = \
                    ms / by_words[base_words]
    return out


def report(summaries: list[dict], extra: dict) -> str:
    cols = [("step ms", "step_ms_median", "{:.1f}"), ("model ms", "model_ms_median", "{:.1f}"),
            ("seq/s", "train_seq_per_s", "{:,.0f}"),
            ("targets/s", "target_tokens_per_s", "{:,.0f}"),
            ("GFLOP/s", "achieved_gflops", "{:.1f}"), ("MFU", "mfu", "{:.1%}"),
            ("matmul ms", "matmul_ms_per_step", "{:.1f}"), ("MFU ceil", "mfu_ceiling", "{:.1%}"),
            ("model/mm", "model_to_matmul", "{:.2f}"), ("floor/mm", "floor_to_matmul", "{:.2f}"),
            ("outside", "outside_model_share", "{:.1%}"),
            ("in wait", "input_wait_share", "{:.1%}")]
    width = max(len(s["label"]) for s in summaries) + 2
    lines = [f"{'configuration':<{width}}" + "".join(f"{c:>12}" for c, _, _ in cols)]
    for s in summaries:
        lines.append(f"{s['label']:<{width}}" + "".join(f"{fmt.format(s[k]):>12}"
                                                        for _, k, fmt in cols))
    lines += [f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in extra.items()]
    return "\n".join(lines)



def report_extras(args, result: dict) -> dict:
    """The lines printed under the table: peaks, ratios, peers, input throughput, evaluation."""
    extra = {f"peak GFLOP/s {name} (median of {args.steps} matmuls of {args.peak_size}^2 "
             "between the steps)": f"{value:.1f}"
             for name, value in result["peak_gflops_by_precision"].items()}
    extra.update(result["ratios"])
    for p in result["peers"]:
        extra[f"{p['label']} seq/s (its loop, median of {p['timed_epochs']} epochs of "
              f"{p['sequences_per_epoch']} sequences)"] = f"{p['train_seq_per_s']:,.0f}"
    for w, v in result["input_seq_per_s_by_workers"].items():
        extra[f"input_seq_per_s with {w} workers (model skipped)"] = f"{v:,.0f}"
    extra["input_seq_per_s / train_seq_per_s"] = (result["input_seq_per_s"]
                                                  / result["train_seq_per_s"])
    if "eval_seconds" in result:
        extra["eval_seconds"] = result["eval_seconds"]
        extra["eval users / NDCG@10"] = (f"{result['eval_users']} / "
                                         f"{result['eval_metrics']['NDCG@10']:.4f}")
    extra["peak_rss_mb"] = result["peak_rss_mb"]
    return extra
