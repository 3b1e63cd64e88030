"""The flags of `main.py`: one parser (help on every flag, ranges checked at parse time by
cli_types), the defaults that depend on other flags (run folders, the demo's protocol, the
objective's per-loss defaults) and `--resume`'s flags from the run's own args.json."""
from __future__ import annotations

import argparse
import os

import torch

from objectives import objective
from run_files import run_folders
from inputs.batching import SPLITS
from training.cli_types import (device_name, finite_float, int_at_least, non_negative_float,
                       non_negative_int, positive_float, positive_int, unit_interval,
                       unit_interval_right_open)
from dataset import BAD_RECORD_POLICIES
from demo_data import MIN_ITEMS as DEMO_MIN_ITEMS
from model import ATTENTION_IMPLS, BLOCKS, FEATURE_FUSIONS, INITS, OUTPUT_EMBEDDINGS, POSITION_MODES
from training.optim import BETAS
from sampling import POPULARITY_SOURCES, RATIO_SCHEDULES
from similarity import DEFAULT_SIMILARITY_TYPES, SIMILARITIES, SIMILARITY_TYPES

# The platform's environment variables, mapped to flag defaults here and nowhere else.
ENV_DEFAULTS = {"data_dir": "TRAIN_DATA_PATH", "log_dir": "TRAIN_LOG_PATH",
                "tb_dir": "TRAIN_TF_EVENTS_PATH", "ckpt_dir": "TRAIN_CKPT_PATH"}
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the TAAC 2025 baseline model: "
                                "`python main.py [--data_dir DIR] [flags]`.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _data_flags(p.add_argument_group("data and run folders"))
    _model_flags(p.add_argument_group("model (the baseline's flags and defaults)"))
    _training_flags(p.add_argument_group("training"))
    _sampling_flags(p.add_argument_group("negative sampling"))
    objective.add_flags(p.add_argument_group("objective (docs/objectives.md)"))
    _evaluation_flags(p.add_argument_group("evaluation"))
    return p


def _data_flags(g) -> None:
    g.add_argument("--data_dir", default=os.environ.get(ENV_DEFAULTS["data_dir"]),
                   help="V1 data directory (env TRAIN_DATA_PATH); none: the built-in demo dataset")
    g.add_argument("--log_dir", default=os.environ.get(ENV_DEFAULTS["log_dir"]),
                   help="train.log, args.json, metrics.json, summary.json (env TRAIN_LOG_PATH; "
                        "default runs/<run_name>/log)")
    g.add_argument("--tb_dir", default=os.environ.get(ENV_DEFAULTS["tb_dir"]),
                   help="TensorBoard event files (env TRAIN_TF_EVENTS_PATH; default runs/<run_name>, "
                        "so `tensorboard --logdir runs` names each run after its run name)")
    g.add_argument("--ckpt_dir", default=os.environ.get(ENV_DEFAULTS["ckpt_dir"]),
                   help="checkpoint folders (env TRAIN_CKPT_PATH; default runs/<run_name>/ckpt)")
    g.add_argument("--run_name", default=None,
                   help="run folder under runs/ for the folders not given (default: <data folder "
                        "name>-<date>-<time>; with --resume: the most recent unfinished run)")
    g.add_argument("--cache_dir", default=None,
                   help="where the parsed data is cached (default: <data_dir>/.cache)")
    g.add_argument("--mm_emb_id", nargs="+", default=None,
                   help="multimodal feature ids (any of 81-86) from creative_emb/ (V1) or mm_emb/ "
                        "(V2), converted once to a float16 table in the cache (default: 81 when "
                        "present)")
    g.add_argument("--on_bad_record", choices=BAD_RECORD_POLICIES, default="error",
                   help="a malformed record stops the run (error) or is skipped and counted (skip)")
    g.add_argument("--demo_users", type=positive_int, default=3000, help="users of the built-in demo dataset")
    g.add_argument("--demo_items", type=int_at_least(DEMO_MIN_ITEMS), default=2000, help="items of the built-in demo dataset")


def _model_flags(g) -> None:
    g.add_argument("--maxlen", type=positive_int, default=101, help="tokens per sequence; arrays have maxlen+1 slots")
    g.add_argument("--hidden_units", type=positive_int, default=32, help="embedding and model width")
    g.add_argument("--num_blocks", type=positive_int, default=1, help="self-attention blocks")
    g.add_argument("--num_heads", type=positive_int, default=1, help="attention heads")
    g.add_argument("--dropout_rate", type=unit_interval_right_open, default=0.2, help="dropout everywhere (embeddings, attention, FFN)")
    g.add_argument("--norm_first", action="store_true", help="pre-LN blocks instead of post-LN (= --block pre_ln)")
    g.add_argument("--block", choices=BLOCKS, default=None,
                   help="the self-attention block. post_ln: LayerNorm after each residual sum, as the "
                        "baseline; pre_ln: LayerNorm before attention and feed-forward; sasrec: the "
                        "SASRec reference's (pmixer's port, as Klenitskiy & Vasilev): queries and "
                        "the residual from the normalised stream, keys and values from the raw one, "
                        "then LayerNorm before the feed-forward (default: pre_ln with --norm_first, "
                        "else post_ln)")
    g.add_argument("--output_embedding", choices=OUTPUT_EMBEDDINGS, default="tied",
                   help="tied: items are scored with the vectors they enter a sequence with (id and "
                        "features), as the baseline; separate: with an id-embedding table of their "
                        "own (gSASRec's untied output embeddings; features then shape only the "
                        "input tokens, and items unseen in training score 0)")
    g.add_argument("--dnn_relu", action=argparse.BooleanOptionalAction, default=True,
                   help="ReLU after itemdnn and userdnn, as the baseline; --no-dnn_relu keeps them "
                        "linear, so item vectors may take any sign (as plain SASRec's embeddings)")
    g.add_argument("--feature_fusion", choices=FEATURE_FUSIONS, default="dnn",
                   help="dnn: id and feature embeddings concatenated through itemdnn/userdnn, as the "
                        "baseline; sum: their sum, no Linear (on id-only data an item is its id "
                        "embedding, as in SASRec); needs data without continual features")
    g.add_argument("--init", choices=INITS, default="xavier",
                   help="xavier: xavier-normal matrices, as the baseline; normal: N(0, 0.02) matrices "
                        "and zero biases, as BERT and the SASRec reproductions")
    g.add_argument("--positions", choices=POSITION_MODES, default="slot",
                   help="slot: position = slot, so the newest token always has the last one, as the "
                        "baseline; from_start: counted from the oldest kept token, as right-padded "
                        "SASRec implementations")
    g.add_argument("--attention_impl", choices=ATTENTION_IMPLS, default="fast",
                   help="sdpa: torch's scaled_dot_product_attention; fast: the same function on CPU with a "
                        "cheaper dropout mask, skipping the causal top-right quarter of the scores; "
                        "fast_full: fast without that skip; autograd: fast differentiated op by op, "
                        "without its hand-written backward (both for benchmarks); GPUs always use sdpa")
    g.add_argument("--use_adaptive_similarity", action="store_true",
                   help="score with a learned mix of similarities instead of the dot product")
    g.add_argument("--similarity_types", nargs="+", choices=SIMILARITY_TYPES,
                   default=list(DEFAULT_SIMILARITY_TYPES),
                   help="similarities mixed by --use_adaptive_similarity")
    g.add_argument("--similarity", choices=list(SIMILARITIES), default="dot",
                   help="fixed similarity when not --use_adaptive_similarity: dot (the baseline) "
                        "or cosine (pair it with a low --tau)")


def _training_flags(g) -> None:
    g.add_argument("--batch_size", type=positive_int, default=128, help="sequences per step")
    g.add_argument("--lr", type=positive_float, default=0.001, help="Adam learning rate")
    g.add_argument("--adam_betas", type=unit_interval_right_open, nargs=2, default=list(BETAS), metavar=("B1", "B2"),
                   help="Adam's betas; the baseline's 0.9 0.98 (torch's default is 0.9 0.999)")
    g.add_argument("--num_epochs", type=positive_int, default=3, help="training epochs")
    g.add_argument("--l2_emb", type=non_negative_float, default=0.0, help="weight of the item-embedding norm in the loss")
    g.add_argument("--seed", type=non_negative_int, default=42, help="seeds the split, init, dropout and negatives")
    g.add_argument("--device", type=device_name, default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    g.add_argument("--sparse_embeddings", action="store_true",
                   help="id/feature tables take sparse gradients and a lazy Adam (SparseAdam): "
                        "step cost no longer grows with the catalogue")
    g.add_argument("--amp", choices=list(AMP_DTYPES), default="none",
                   help="bf16 autocast for the model; losses and metrics stay fp32")
    g.add_argument("--input_workers", type=non_negative_int, default=1,
                   help="0: batches (windows, negatives, multimodal rows) built inline between "
                        "steps; 1: built ahead of the model by a background thread, same batches in "
                        "the same order; N > 1: N - 1 more threads assemble batches ahead and N - 1 "
                        "prepare them (pinning, multimodal rows); negatives stay one ordered stream")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile (inductor) the self-attention blocks, forward and backward; "
                        "off by default: on CPU it gained 1.08x in bf16 and nothing in fp32, after a "
                        "minute of compilation (docs/speed.md section 3)")
    g.add_argument("--log_every", type=positive_int, default=20, help="steps between Loss/train points")
    g.add_argument("--state_dict_path", default=None,
                   help="checkpoint folder or model.pt: resume training, or serve --inference_only")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --ckpt_dir; without --run_name and "
                        "folders: continue the most recent unfinished run under runs/ with its flags")
    g.add_argument("--keep_checkpoints", type=non_negative_int, default=3,
                   help="keep the newest N epoch checkpoints (and always the best one); 0: keep all")
    g.add_argument("--inference_only", action="store_true",
                   help="no training: evaluate the --state_dict_path checkpoint and exit")


def _sampling_flags(g) -> None:
    g.add_argument("--use_smart_sampling", action="store_true",
                   help="draw a share of negatives by popularity, the rest uniformly")
    g.add_argument("--popular_ratio", type=unit_interval, default=0.3, help="share of popularity-drawn negatives")
    g.add_argument("--popularity_source", choices=POPULARITY_SOURCES, default="counts",
                   help="counts: training frequency ** factor; power_law: 1 / item_id ** factor")
    g.add_argument("--popularity_factor", type=finite_float, default=0.75, help="exponent of the popularity")
    g.add_argument("--popular_ratio_schedule", choices=RATIO_SCHEDULES, default="constant",
                   help="linear: ramp the popular share from 0 to --popular_ratio (curriculum)")
    g.add_argument("--curriculum_epochs", type=positive_int, default=5, help="epochs of the linear ramp")


def _evaluation_flags(g) -> None:
    g.add_argument("--eval_protocol", choices=SPLITS, default=None,
                   help="random_user: the baseline's 90/10 user split with validation loss; "
                        "leave_one_out: ranking metrics on each user's last items; competition: "
                        "each user's last conversion, else last click, held out (test) and the one "
                        "before it (valid), with HR@10, NDCG@10, score and action-weighted ones "
                        "(default: random_user with --data_dir, as the baseline; leave_one_out on "
                        "the demo data)")
    g.add_argument("--eval_every", type=positive_int, default=1, help="epochs between validation rankings")
    g.add_argument("--patience", type=non_negative_int, default=0,
                   help="stop after this many rankings without a better valid NDCG@10 (0: never)")
    g.add_argument("--eval_filter_seen", action=argparse.BooleanOptionalAction, default=True,
                   help="exclude the user's input items from the ranking")
    g.add_argument("--eval_sampled", type=non_negative_int, default=0,
                   help="rank against N sampled negatives (the SASRec paper's 100) instead of all items")
    g.add_argument("--eval_batch_size", type=positive_int, default=128,
                   help="users per evaluation chunk (memory: 128 keeps ML-1M training + evaluation under 1 GB)")


def block_of(args) -> str:
    """The block the flags describe; also right for the args of checkpoints made before --block."""
    block = getattr(args, "block", None)
    return block if block is not None else ("pre_ln" if args.norm_first else "post_ln")


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.state_dict_path is None:
        args = _resume_defaults(parser, argv, args)
    if len(set(args.similarity_types)) != len(args.similarity_types):
        parser.error(f"--similarity_types has a duplicate: {args.similarity_types}")
    if args.resume and args.state_dict_path:
        parser.error("--resume and --state_dict_path are alternatives: pass one")
    if args.sparse_embeddings and args.l2_emb:
        parser.error("--l2_emb adds the norm of the whole item table (a dense gradient): "
                     "it cannot be combined with --sparse_embeddings")
    if args.input_workers < 0:
        parser.error(f"--input_workers must be >= 0 (0: batches built inline), got {args.input_workers}")
    if args.inference_only and not args.state_dict_path:
        parser.error("--inference_only needs --state_dict_path")
    if args.norm_first and args.block not in (None, "pre_ln"):
        parser.error(f"--norm_first means --block pre_ln; it contradicts --block {args.block}")
    args.block = block_of(args)
    args.norm_first = args.block == "pre_ln"  # what readers of older runs' args.json look at
    error = objective.check_args(args)
    if error:
        parser.error(error)
    if args.eval_protocol is None:  # the demo shows ranking metrics; real data: the baseline's
        args.eval_protocol = "random_user" if args.data_dir else "leave_one_out"
    if args.run_name is None:
        args.run_name = run_folders.default_run_name(args.data_dir)
    if args.eval_protocol == "competition" and args.eval_sampled:
        parser.error("--eval_protocol competition ranks against all items or the data's "
                     "candidate pool, not --eval_sampled")
    for name in ("log_dir", "tb_dir", "ckpt_dir"):
        if getattr(args, name) is None:
            setattr(args, name, run_folders.default_dir(args.run_name, name))
    return args


def _resume_defaults(parser, argv, args) -> argparse.Namespace:
    """--resume continues a run with the flags it was started with (its args.json; flags given
    now still win). Without a run name or folders: the most recent unfinished run under runs/."""
    name = args.run_name
    if name is None and not any(getattr(args, d) for d in ("log_dir", "tb_dir", "ckpt_dir")):
        name = run_folders.latest_unfinished_run()
        if name is None:
            return args  # nothing to continue: a fresh run (restore() says so)
        parser.set_defaults(run_name=name)
    log_dir = args.log_dir or (run_folders.default_dir(name, "log_dir") if name else None)
    saved = run_folders.saved_args(log_dir) if log_dir else {}
    known = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in saved.items()
                           if k in known and k not in ("resume", "state_dict_path", "inference_only")})
    return parser.parse_args(argv)


