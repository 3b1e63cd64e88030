"""The study's configurations (name -> main.py flags) and the checks of the flags every run
shares."""
from __future__ import annotations

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
    "full_softmax_mask_history_cosine_tau": ["--loss", "full_softmax", "--mask_history"]
                                            + COSINE_TAU,
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
