"""What TensorBoard shows about a run besides its curves: one HParams entry (the run's option
flags, seed and loss configuration, with its validation and test metrics) and a legend of the
scalar tags written as a text summary at step 0.

The HParams entry is written into the run's own event folder (not a sub-run as
`SummaryWriter.add_hparams` does), and its metrics point at scalar tags the run writes anyway
(`Loss/valid`, `Metrics/valid_*`) plus two test scalars, so it adds no one-point cards to the
scalar views beyond `Test/HR@10` and `Test/NDCG@10`. HParams columns marked `differs` are the ones
TensorBoard shows before the user picks columns: the flags changed from their defaults, the
seed, the loss configuration, the data and the evaluation protocol.
"""
from __future__ import annotations

import time

from google.protobuf import struct_pb2
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata
from tensorboard.plugins.hparams import plugin_data_pb2

# TensorBoard's HParams table shows five columns until the user picks others: those marked
# `differs`, in name order. These five tell runs apart: `options` is every flag set away from its
# default, `loss` the objective with its settings.
SHOWN = ("data", "eval_protocol", "loss", "options", "seed")
# The objective's flags (the objectives work adds them; a run without them trains with BCE).
LOSS_KEYS = ("loss", "num_negatives", "negatives", "logq_correction", "tau", "gbce_t")
# Recorded one by one as well (hidden until picked): the option flags and the configuration.
OTHER = ("use_adaptive_similarity", "similarity_types", "use_smart_sampling", "popularity_source",
         "popular_ratio", "popularity_factor", "popular_ratio_schedule", "curriculum_epochs",
         "feature_fusion", "init", "positions", "norm_first", "block", "output_embedding",
         "dnn_relu", "maxlen", "hidden_units", "num_blocks", "num_heads", "dropout_rate",
         "batch_size", "lr", "adam_betas", "num_epochs",
         "l2_emb", "amp", "sparse_embeddings", "attention_impl", "eval_every", "patience",
         "eval_sampled", "eval_filter_seen", "mm_emb_id")
# Flags that place files or steer the process, not what is learned: never in `options`.
PLUMBING = ("data_dir", "log_dir", "tb_dir", "ckpt_dir", "run_name", "cache_dir", "device",
            "log_every", "state_dict_path", "resume", "inference_only", "keep_checkpoints",
            "eval_batch_size", "demo_users", "demo_items", "on_bad_record", "seed",
            "eval_protocol", *LOSS_KEYS)
# (tag, what the column says); valid metrics are the last ranking's, test those of the best
# checkpoint.
METRICS = (("Test/NDCG@10", "test NDCG@10 of the best checkpoint"),
           ("Test/HR@10", "test HR@10 of the best checkpoint"),
           ("Metrics/valid_NDCG@10", "validation NDCG@10 (last ranking)"),
           ("Metrics/valid_HR@10", "validation HR@10 (last ranking)"),
           ("Loss/valid", "validation loss (last epoch)"))


def hparam_values(args, defaults: dict) -> dict[str, object]:
    """{name: bool | float | str}: SHOWN then OTHER; lists joined, None -> 'none'.
    defaults: {dest: default} of the parser, to tell which flags a run changed."""
    values = {"data": _data_name(args), "eval_protocol": args.eval_protocol,
              "loss": loss_description(args), "options": changed_flags(args, defaults),
              "seed": args.seed}
    for key in OTHER:
        value = getattr(args, key, None)
        values[key] = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return {k: "none" if v is None else v for k, v in values.items()}


def loss_description(args) -> str:
    """'bce' (the baseline) or e.g. 'sampled_softmax num_negatives=1024 tau=0.05'."""
    loss = getattr(args, "loss", None) or "bce"
    rest = [f"{k}={_flag_value(getattr(args, k))}" for k in LOSS_KEYS[1:] if hasattr(args, k)]
    return " ".join([loss, *rest])


def changed_flags(args, defaults: dict) -> str:
    """The flags this run sets away from their defaults, as on a command line; 'defaults'."""
    parts = []
    for key, default in defaults.items():
        value = getattr(args, key, default)
        if key in PLUMBING or _norm(value) == _norm(default):
            continue
        if isinstance(value, bool):
            parts.append(f"--{key}" if value else f"--no-{key}")
        else:
            parts.append(f"--{key} {_flag_value(value)}")
    return " ".join(parts) or "defaults"


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def _flag_value(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _data_name(args) -> str:
    data_dir = getattr(args, "data_dir", None)
    return str(data_dir) if data_dir else f"demo_u{args.demo_users}_i{args.demo_items}"


def write_hparams_start(writer, args, defaults: dict) -> None:
    """The experiment (columns) and this run's session start (its values), at run start."""
    values = hparam_values(args, defaults)
    infos = [api_pb2.HParamInfo(name=k, type=_type(v), differs=k in SHOWN)
             for k, v in values.items()]
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag,
                                  description=text) for tag, text in METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    _write(writer, metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(
        version=metadata.PLUGIN_DATA_VERSION, experiment=experiment))
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for k, v in values.items():
        start.hparams[k].CopyFrom(_value(v))
    _write(writer, metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(
        version=metadata.PLUGIN_DATA_VERSION, session_start_info=start))


def write_hparams_end(writer) -> None:
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    _write(writer, metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(
        version=metadata.PLUGIN_DATA_VERSION, session_end_info=end))


def _type(value) -> int:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def _value(value) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=str(value))


def _write(writer, tag: str, data: plugin_data_pb2.HParamsPluginData) -> None:
    meta = metadata.create_summary_metadata(data)
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, metadata=meta)]))


def legend(args) -> str:
    """Markdown: what each scalar tag this run writes means."""
    rows = [("Loss/train", f"training loss, mean over the last --log_every ({args.log_every}) steps"),
            ("Loss/valid", "validation loss with fixed negatives, so epochs compare; step 0 is "
                           "the untrained model")]
    if args.eval_protocol == "leave_one_out":
        rows += [("Metrics/valid_*", "ranking of every user's second-to-last item among all items "
                                     f"(every {args.eval_every} epochs): HR@10, NDCG@10, MRR, AUC, "
                                     "score = 0.31 HR@10 + 0.69 NDCG@10"),
                 ("Test/HR@10, Test/NDCG@10", "the last items, ranked by the checkpoint with the "
                                              "best validation NDCG@10 (one point, at the end)")]
    rows += _similarity_rows(args)
    if args.use_smart_sampling:
        rows += [("Sampling/popular_ratio", "share of negatives drawn by popularity"),
                 ("Sampling/neg_popularity", "mean popularity percentile of the drawn negatives")]
    rows.append(("Time/epoch_seconds", "wall-clock seconds of the epoch's training steps"))
    lines = ["| tag | meaning |", "|---|---|", *(f"| `{t}` | {m} |" for t, m in rows)]
    return "\n".join(lines)


def _similarity_rows(args) -> list[tuple[str, str]]:
    """Rows for the adaptive similarity's scalars: only the chosen types' weights exist."""
    if not args.use_adaptive_similarity:
        return []
    types = set(args.similarity_types)
    collinear = {"dot", "scaled"} <= types
    text = {"dot": ("alpha", "weight of the dot product"),
            "cosine": ("beta", "weight of the cosine (bounded in [-1, 1]: moves a logit by at most "
                               "temperature x beta)"),
            "scaled": ("gamma", "weight of the dot product / sqrt(D)"),
            "bilinear": ("delta", "weight of q^T W v (W starts at the identity: at first another "
                                  "copy of the dot product)")}
    rows = [("Similarity/temperature", "multiplies the whole score: only products such as "
                                       "temperature x alpha are meaningful")]
    for t in ("dot", "cosine", "scaled", "bilinear"):
        if t in types:
            name, meaning = text[t]
            if collinear and t in ("dot", "scaled"):
                meaning += "; collinear with the other: only alpha + gamma / sqrt(D) matters"
            rows.append((f"Similarity/{name}", meaning))
    return rows
