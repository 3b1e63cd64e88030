"""From parsed flags to the objects a run trains: logging, seed, device, data, split, sampler,
model, and the checks made before the first step (disk space for checkpoints, --eval_sampled)."""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset import DataError, load_dataset
from inputs.batching import competition_split, item_counts, leave_one_out_split, random_user_split
from inputs.unique import sorted_unique
from model import BaseModel
from objectives import objective
from sampling import build_sampler
from similarity import build_similarity
from training import distributed as dist
from training.flags import block_of

log = logging.getLogger("main")

class TqdmHandler(logging.StreamHandler):
    """Log lines printed above the progress bar (tqdm.write) instead of glued onto it."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a failing handler must not kill the run
            self.handleError(record)


def setup_logging(log_dir: str, rank: int) -> None:
    handlers = [TqdmHandler(sys.stderr)]
    if rank == 0:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(log_dir) / "train.log"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    log.info("device: %s%s", device,
             f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    return device


def load_data(args):
    data_dir = args.data_dir
    if data_dir is None:
        data_dir = ensure_demo_data(args)
    elif not Path(data_dir).is_dir():
        raise DataError(f"--data_dir {data_dir}: the folder does not exist"
                        + ("" if Path(data_dir).parent.is_dir()
                           else f" (nor its parent {Path(data_dir).parent})"))
    data = load_dataset(data_dir, args.cache_dir, args.mm_emb_id, args.on_bad_record)
    if args.eval_protocol == "competition" and data.stats.get("layout") == "v2":
        from layouts.inference_v2 import candidate_item_rids
        data.candidate_items = candidate_item_rids(data_dir)  # rank against candidate/, if any
    return data


def ensure_demo_data(args) -> str:
    """The built-in demo dataset, generated once (deterministically) under .demo_data/."""
    from demo_data import write_demo_dataset
    root = Path(args.cache_dir or ".demo_data")
    path = root / f"demo_u{args.demo_users}_i{args.demo_items}"
    if dist.is_main() and not (path / "seq.jsonl").exists():
        log.info("no --data_dir: generating the demo dataset in %s", path)
        write_demo_dataset(path, num_users=args.demo_users, num_items=args.demo_items, seed=0)
    dist.barrier()
    return str(path)


def make_split(args, data):
    if args.eval_protocol == "leave_one_out":
        return leave_one_out_split(data.seqs)
    if args.eval_protocol == "competition":
        return competition_split(data.seqs)
    return random_user_split(data.seqs, valid_share=0.1, seed=args.seed)


def make_sampler(args, data, split, seed: int):
    """The negatives batch assembly draws: the per-position sampler (the baseline's BCE), or
    the shared negatives of the other losses over it (objective.wrap_sampler)."""
    counts = item_counts(data.seqs, split.train, data.itemnum)
    sampler = build_sampler(data.itemnum, counts, np.asarray(data.item_valid), seed,
                            objective.popularity_negatives(args), args.popular_ratio,
                            args.popularity_source, args.popularity_factor,
                            args.popular_ratio_schedule, args.curriculum_epochs)
    return objective.wrap_sampler(args, sampler, counts)


def feature_tensors(data) -> dict[str, torch.Tensor]:
    t = data.tables
    tables = {name: torch.from_numpy(np.array(getattr(t, name))) for name in
              ("item_sparse", "item_array", "item_continual",
               "user_sparse", "user_array", "user_continual")}
    # multimodal tables stay numpy (memory-mapped): the model gathers a batch's rows on the host
    tables.update({f"mm_{fid}": v for fid, v in t.mm.items()})
    return tables


def build_model(args, schema: dict, tables: dict[str, torch.Tensor], itemnum: int,
                usernum: int) -> BaseModel:
    """The model the flags describe; also rebuilds a trained one from a checkpoint's args."""
    similarity = build_similarity(args.hidden_units, args.use_adaptive_similarity,
                                  args.similarity_types, args.similarity)
    output_embedding = getattr(args, "output_embedding", "tied")  # checkpoints made before it: tied
    return BaseModel(schema, tables, itemnum, usernum,
                     hidden_units=args.hidden_units, num_blocks=args.num_blocks,
                     num_heads=args.num_heads, dropout_rate=args.dropout_rate, maxlen=args.maxlen,
                     block=block_of(args), dnn_relu=args.dnn_relu, similarity=similarity,
                     attention_impl=args.attention_impl,
                     sparse_embeddings=args.sparse_embeddings, feature_fusion=args.feature_fusion,
                     init=args.init, positions=args.positions,
                     output_embedding=output_embedding)


def compile_model(model: BaseModel, backend: str = "inductor") -> BaseModel:
    """Compiles the model's self-attention blocks (`BaseModel.encode`) in place: parameters,
    state_dict keys and checkpoints stay those of the eager model. Not the whole forward: the
    embedding lookups' backward, compiled, ran several times slower on CPU (docs/speed.md
    section 3). The shapes vary only with the last, partial batch of an epoch: one
    recompilation, then both shapes are cached."""
    model.encode = torch.compile(model.encode, backend=backend)
    return model


def checkpoint_bytes(model) -> int:
    """About one checkpoint's size: the weights and Adam's two moments per parameter."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def check_eval_sampled(args, data) -> None:
    """--eval_sampled N needs N items outside every user's history and target (conservatively:
    outside the user's whole line); found now, not after the first epoch."""
    if not args.eval_sampled:
        return
    seqs = data.seqs
    items = np.asarray(seqs.tok_type) == 1
    line = np.repeat(np.arange(seqs.num_lines), np.diff(np.asarray(seqs.line_offsets)))
    pairs = sorted_unique(line[items].astype(np.int64) * (data.itemnum + 1)
                          + np.asarray(seqs.tok_id)[items])
    distinct = np.bincount(pairs // (data.itemnum + 1), minlength=seqs.num_lines)
    allowed = data.itemnum - int(distinct.max()) if len(distinct) else data.itemnum
    if args.eval_sampled > allowed:
        raise DataError(f"--eval_sampled {args.eval_sampled}: the catalogue has {data.itemnum} "
                        f"items and the longest history {int(distinct.max())} distinct ones, so at "
                        f"most {max(allowed, 0)} negatives can be drawn for every user")

