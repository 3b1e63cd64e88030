"""BaseModel: the TAAC 2025 baseline's SASRec-style encoder, with features gathered from tables.

Faithful to the original: item id + item features -> itemdnn (ReLU); user id + user features ->
userdnn (ReLU); a token is item part + user part, scaled by sqrt(hidden), plus an absolute
position embedding; causal self-attention blocks (post-LN; or pre-LN, or the SASRec reference's
block: `BLOCKS`); a final LayerNorm. Different in one way that changes no number: the baseline
turned per-token Python dicts into tensors inside forward; here every feature is a row of a table
(a registered buffer) gathered by id, so forward is pure tensor work.

Options, off by default (README "Why the ML-1M baseline lands below ..."): feature_fusion "sum"
(no itemdnn/userdnn: an item is the sum of its embeddings), init "normal" (N(0, 0.02), zero
biases) and positions "from_start" (counted from the oldest token instead of by slot).

Takes explicit hyperparameters and tensors only; the device comes from the inputs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inputs.host_tables import HostTables, ItemMM
from kernels.attention import attention
from kernels.dropout import Dropout
from kernels.embedding import gather_rows
from kernels.layer_norm import LayerNorm
from similarity import DotSimilarity

TOKEN_ITEM, TOKEN_PROFILE = 1, 2
ATTENTION_IMPLS = ("sdpa", "fast", "fast_full", "autograd")
FEATURE_FUSIONS = ("dnn", "sum")
INITS = ("xavier", "normal")
POSITION_MODES = ("slot", "from_start")
# post_ln: LayerNorm after each residual sum, as the baseline. pre_ln: LayerNorm before attention
# and feed-forward (--norm_first). sasrec: the SASRec reference's block (pmixer's port, which
# Klenitskiy & Vasilev's published numbers use): queries and the attention's residual come from
# the normalised stream, keys and values from the raw one; then LayerNorm, and the feed-forward
# with its residual.
BLOCKS = ("post_ln", "pre_ln", "sasrec")
# tied: an item is scored with the vector it enters a sequence with, as the baseline. separate:
# with an id-embedding table of its own (gSASRec's and BERT4Rec's untied output embeddings), so
# the loss's many negative terms move the scoring vectors, not the input tokens.
OUTPUT_EMBEDDINGS = ("tied", "separate")


def item_lookup_ids(seq, token_type, pos, neg=None, cand=None):
    """The item ids a forward looks up, flat and in its order: the input items, pos and neg
    (B, L) each (neg when given), then the candidates cand (M,). numpy arrays (the host side,
    gathering multimodal rows ahead) or tensors (the forward) alike."""
    parts = [seq * (token_type == TOKEN_ITEM), pos] + ([] if neg is None else [neg])
    flat = [p.reshape(-1) for p in parts] + ([] if cand is None else [cand])
    return np.concatenate(flat) if isinstance(seq, np.ndarray) else torch.cat(flat)


class ModelConfigError(ValueError):
    """Hyperparameters the model cannot be built with; the message names the flag to change."""


class MultiHeadAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, dropout_rate: float, impl: str = "sdpa"):
        super().__init__()
        if hidden % num_heads:
            raise ModelConfigError(f"--hidden_units {hidden} is not divisible by --num_heads {num_heads}")
        self.num_heads, self.dropout_rate, self.impl = num_heads, dropout_rate, impl
        self.q_linear = nn.Linear(hidden, hidden)
        self.k_linear = nn.Linear(hidden, hidden)
        self.v_linear = nn.Linear(hidden, hidden)
        self.out_linear = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, mask: Tensor, last_only: bool = False,
                cache: dict | None = None, keys_from: Tensor | None = None) -> Tensor:
        """x (B, L, D), mask (B, 1, L, L) -> (B, L, D); with last_only, only the newest slot's
        output (B, 1, D): its query attends to every key, the other queries are not computed.
        `cache`: see `attention` (one dict per batch, shared by the blocks). `keys_from`
        (B, L, D): keys and values from this instead of x (the SASRec reference's block)."""
        b, n, d = x.shape
        split = lambda t: t.view(b, t.shape[1], self.num_heads, d // self.num_heads).transpose(1, 2)  # noqa: E731
        queries = x[:, -1:] if last_only else x
        if last_only or keys_from is not None:
            kv = x if keys_from is None else keys_from
            q = self.q_linear(queries)
            k, v = self._projections(kv, self.k_linear, self.v_linear).split(d, dim=-1)
        else:
            q, k, v = self._projections(x, self.q_linear, self.k_linear, self.v_linear).split(d, dim=-1)
        out = attention(split(q), split(k), split(v), mask[:, :, -1:] if last_only else mask,
                        self.dropout_rate if self.training else 0.0, self.impl,
                        causal=not last_only, cache=cache)
        return self.out_linear(out.transpose(1, 2).reshape(b, queries.shape[1], d))


    @staticmethod
    def _projections(x: Tensor, *layers: nn.Linear) -> Tensor:
        """x (B, L, D) -> [q | k | v] (B, L, 3D) (or [k | v]): the projections as one matrix
        product, so x is read (and under autocast converted to bf16) once instead of three
        times, and the backward runs one input-gradient product instead of three plus their sum."""
        return F.linear(x, torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers]))


class PointWiseFeedForward(nn.Module):
    """The baseline's Conv1d(kernel 1) pair, written as the equivalent Linear layers."""

    def __init__(self, hidden: int, dropout_rate: float):
        super().__init__()
        self.conv1, self.conv2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.dropout1, self.dropout2 = Dropout(dropout_rate), Dropout(dropout_rate)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout2(self.conv2(torch.relu(self.dropout1(self.conv1(x)))))


class FeatureEmbedder(nn.Module):
    """Ids -> token vectors. Tables are buffers (data, not weights: not saved in checkpoints).

    tables: item_sparse (I+1, S) int, item_array (I+1, A, W) int, item_continual (I+1, C) float,
    the same for user_*, and mm_<fid> (I+1, dim) float; row 0 is zeros, so padding and missing
    values embed to zero exactly as the baseline's filled-in defaults did. The mm_<fid> tables
    (numpy arrays or memmaps, or CPU tensors) stay on the host (`host_mm`, inputs/host_tables.py): only
    the rows a batch uses reach the device, projected by emb_transform as the baseline does.
    Optional item_emb_id / user_emb_id (rows,) int map a table row to its id-embedding row; by
    default row r uses id r. Inference uses them for cold users and items: rows of their own
    (their features count) whose id embedding is 0 (unseen ids map to 0).
    """

    def __init__(self, schema: dict, tables: dict[str, Tensor], itemnum: int, usernum: int,
                 hidden: int, sparse: bool = False, relu: bool = True, fusion: str = "dnn"):
        super().__init__()
        if fusion not in FEATURE_FUSIONS:
            raise ModelConfigError(f"--feature_fusion {fusion!r} is not one of {FEATURE_FUSIONS}")
        continual = schema["item_continual"] + schema["user_continual"]
        if fusion == "sum" and continual:
            raise ModelConfigError(f"--feature_fusion sum adds feature vectors, but features "
                                   f"{continual} are continual scalars; use --feature_fusion dnn")
        self.schema, self.fusion = schema, fusion
        # The baseline's ReLU after itemdnn/userdnn keeps every item vector in the positive
        # orthant; relu=False leaves the layers linear (an option, not the baseline).
        self.activation = nn.ReLU() if relu else nn.Identity()
        # sparse=True: id and feature tables get sparse gradients (for torch's SparseAdam), so a
        # step's update cost follows the rows the batch touched, not the catalogue size.
        self.item_emb = nn.Embedding(itemnum + 1, hidden, padding_idx=0, sparse=sparse)
        self.user_emb = nn.Embedding(usernum + 1, hidden, padding_idx=0, sparse=sparse)
        self.sparse_emb = nn.ModuleDict({
            fid: nn.Embedding(schema["vocab"][fid] + 1, hidden, padding_idx=0, sparse=sparse)
            for side in ("user", "item") for kind in ("sparse", "array")
            for fid in schema[f"{side}_{kind}"]})
        self.emb_transform = nn.ModuleDict({fid: nn.Linear(dim, hidden)
                                            for fid, dim in schema["mm_dims"].items()})
        self.host_mm = HostTables({fid: tables[f"mm_{fid}"] for fid in schema["mm_dims"]})
        for name, table in tables.items():
            if not name.startswith("mm_"):
                self.register_buffer(name, table, persistent=False)
        if fusion == "dnn":
            n_item = 1 + len(schema["item_sparse"]) + len(schema["item_array"]) + len(schema["mm_dims"])
            n_user = 1 + len(schema["user_sparse"]) + len(schema["user_array"])
            self.itemdnn = nn.Linear(hidden * n_item + len(schema["item_continual"]), hidden)
            self.userdnn = nn.Linear(hidden * n_user + len(schema["user_continual"]), hidden)

    def _side(self, side: str, ids: Tensor, id_emb: nn.Embedding,
              item_mm: ItemMM | None = None) -> list[Tensor]:
        emb_id = getattr(self, f"{side}_emb_id", None)
        parts = [id_emb(ids if emb_id is None else emb_id[ids])]
        sparse = getattr(self, f"{side}_sparse")[ids]
        parts += [self.sparse_emb[fid](sparse[..., j])
                  for j, fid in enumerate(self.schema[f"{side}_sparse"])]
        arrays = getattr(self, f"{side}_array")[ids]
        parts += [self.sparse_emb[fid](arrays[..., j, :]).sum(-2)
                  for j, fid in enumerate(self.schema[f"{side}_array"])]
        if side == "item" and self.schema["mm_dims"]:
            parts += self._mm_parts(ids, item_mm)
        if self.schema[f"{side}_continual"]:
            parts.append(getattr(self, f"{side}_continual")[ids].to(parts[0].dtype))
        return parts

    def _mm_parts(self, ids: Tensor, item_mm: ItemMM | None) -> list[Tensor]:
        """(...) ids -> per multimodal feature (..., D): each distinct id's row projected once,
        then expanded. item_mm: the rows gathered on the host ahead of time (no sync); None
        gathers them from `ids` here (a device-to-host copy of the ids)."""
        uniq, rows = item_mm if item_mm is not None else self.host_mm.gather_tensor(ids)
        inverse = torch.searchsorted(uniq, ids)  # uniq is sorted and holds every id looked up
        out = []
        for fid, r in zip(self.schema["mm_dims"], rows):
            linear = self.emb_transform[fid]
            out.append(gather_rows(linear(r.to(linear.weight.dtype)), inverse))
        return out

    def items(self, ids: Tensor, item_mm: ItemMM | None = None) -> Tensor:
        """Item ids (...) -> item part (..., D); id 0 gives the padding item's vector.
        item_mm: see _mm_parts."""
        return self._fuse(self._side("item", ids, self.item_emb, item_mm), "itemdnn")

    def users(self, ids: Tensor) -> Tensor:
        """User ids (...) -> user part (..., D)."""
        return self._fuse(self._side("user", ids, self.user_emb), "userdnn")

    def _fuse(self, parts: list[Tensor], dnn_name: str) -> Tensor:
        """The baseline's "dnn": a Linear (+ ReLU) over the concatenated parts. "sum": the parts'
        sum, so on id-only data an item is its id embedding alone, as in the SASRec paper, and
        padding (all parts 0) embeds to exactly 0 instead of the Linear's bias. The sum adds
        part by part: no stacked copy, and a single part is returned as it is."""
        if self.fusion == "sum":
            return sum(parts[1:], parts[0])
        return self.activation(getattr(self, dnn_name)(torch.cat(parts, -1)))

    def tokens(self, seq: Tensor, token_type: Tensor, item_part: Tensor | None = None) -> Tensor:
        """seq, token_type (B, L) -> (B, L, D): item part + user part, as the baseline.

        The baseline ran userdnn on every slot, but an item slot's user input is all zeros
        (padding id and missing features), so its user part is the constant users(0). Only the
        profile slot (at most one per row: one profile per line) needs userdnn; computing just
        that gives the same numbers at a fraction of the cost. `item_part` (B, L, D), when given,
        is the items' part already computed (see BaseModel.forward).
        """
        is_profile = token_type == TOKEN_PROFILE
        if item_part is None:
            item_part = self.items(seq * (token_type == TOKEN_ITEM))
        profile_id = (seq * is_profile).amax(dim=1)  # (B,), 0 when a row has no profile
        users = self.users(torch.cat([profile_id, profile_id.new_zeros(1)]))  # (B + 1, D)
        user_part = torch.where(is_profile[..., None], users[:-1, None, :], users[-1])
        return item_part + user_part


class BaseModel(nn.Module):
    """forward -> (pos_logits, neg_logits); predict -> (B, D); embed_items(ids) -> (..., D).

    `maxlen` is the baseline's: sequences have maxlen + 1 slots. Every score goes through
    `self.similarity` (dot product unless another similarity module is given).
    """

    def __init__(self, schema: dict, tables: dict[str, Tensor], itemnum: int, usernum: int,
                 hidden_units: int = 32, num_blocks: int = 1, num_heads: int = 1,
                 dropout_rate: float = 0.2, maxlen: int = 101, block: str = "post_ln",
                 dnn_relu: bool = True, similarity: nn.Module | None = None,
                 attention_impl: str = "sdpa", sparse_embeddings: bool = False,
                 feature_fusion: str = "dnn", init: str = "xavier", positions: str = "slot",
                 output_embedding: str = "tied"):
        super().__init__()
        if init not in INITS or positions not in POSITION_MODES or block not in BLOCKS \
                or output_embedding not in OUTPUT_EMBEDDINGS:
            raise ModelConfigError(
                f"--init {init!r} / --positions {positions!r} / --block {block!r} / --output_embedding "
                f"{output_embedding!r}: expected one of {INITS} / {POSITION_MODES} / {BLOCKS} / "
                f"{OUTPUT_EMBEDDINGS}")
        self.hidden, self.block, self.positions = hidden_units, block, positions
        self.features = FeatureEmbedder(schema, tables, itemnum, usernum, hidden_units,
                                        sparse=sparse_embeddings, relu=dnn_relu,
                                        fusion=feature_fusion)
        self.pos_emb = nn.Embedding(2 * maxlen + 1, hidden_units, padding_idx=0)
        self.emb_dropout = Dropout(dropout_rate)
        self.attention_layernorms = nn.ModuleList()
        self.attention_layers = nn.ModuleList()
        self.forward_layernorms = nn.ModuleList()
        self.forward_layers = nn.ModuleList()
        for _ in range(num_blocks):
            self.attention_layernorms.append(LayerNorm(hidden_units, eps=1e-8))
            self.attention_layers.append(
                MultiHeadAttention(hidden_units, num_heads, dropout_rate, attention_impl))
            self.forward_layernorms.append(LayerNorm(hidden_units, eps=1e-8))
            self.forward_layers.append(PointWiseFeedForward(hidden_units, dropout_rate))
        self.last_layernorm = LayerNorm(hidden_units, eps=1e-8)
        self.output_emb = None if output_embedding == "tied" else nn.Embedding(
            itemnum + 1, hidden_units, padding_idx=0, sparse=sparse_embeddings)
        self._init_weights(init)
        # Added after the init so a similarity's own initialisation (bilinear = identity) stays.
        self.similarity = similarity if similarity is not None else DotSimilarity()

    def _init_weights(self, init: str) -> None:
        """"xavier", as the baseline: xavier-normal for every matrix, torch's defaults for the
        rest. "normal", as BERT and the SASRec reproductions (RecBole, Klenitskiy & Vasilev):
        every matrix N(0, 0.02), every bias 0 (LayerNorms stay 1 and 0). Padding rows are 0."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                if init == "xavier":
                    nn.init.xavier_normal_(p)
                else:
                    nn.init.normal_(p, std=0.02)
            elif init == "normal" and name.endswith("bias"):
                nn.init.zeros_(p)
        for m in self.modules():
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    @property
    def item_emb(self) -> nn.Embedding:
        return self.features.item_emb

    def log2feats(self, seq: Tensor, token_type: Tensor, item_part: Tensor | None = None,
                  last_only: bool = False) -> Tensor:
        """seq, token_type (B, L) int -> (B, L, D) sequence representation at every slot, or
        with last_only (B, 1, D) at the newest slot alone (the last block then computes only
        that slot: the same numbers for it at about half the cost)."""
        x = self.features.tokens(seq, token_type, item_part) * (self.hidden ** 0.5)
        nonpad = seq != 0
        x = self.emb_dropout(x + self.pos_emb(self._position_ids(nonpad)))
        return self.encode(x, self._attention_mask(nonpad), last_only)

    def encode(self, x: Tensor, mask: Tensor, last_only: bool = False) -> Tensor:
        """The self-attention blocks and the last LayerNorm: tokens (B, L, D), mask (B, 1, L, L)
        -> (B, L, D), or (B, 1, D) with last_only. The part --compile compiles
        (training.setup.compile_model): all of the step's (B, L, L) work and most of its
        elementwise passes, and none of the embedding lookups, whose backward inductor's CPU
        code runs as a scatter several times slower than eager's."""
        cache: dict = {}  # the mask's additive biases, built by the first block, used by all
        blocks = list(zip(self.attention_layernorms, self.attention_layers,
                          self.forward_layernorms, self.forward_layers))
        for i, (attn_ln, attn, ffn_ln, ffn) in enumerate(blocks):
            last = last_only and i == len(blocks) - 1
            newest = (lambda t: t[:, -1:]) if last else (lambda t: t)  # noqa: E731
            if self.block == "pre_ln":
                x = newest(x) + attn(attn_ln(x), mask, last, cache)
                x = x + ffn(ffn_ln(x))
            elif self.block == "sasrec":
                normed = attn_ln(x)
                x = ffn_ln(newest(normed) + attn(normed, mask, last, cache, keys_from=x))
                x = x + ffn(x)
            else:
                x = attn_ln(newest(x) + attn(x, mask, last, cache))
                x = ffn_ln(x + ffn(x))
        return self.last_layernorm(x[:, -1:] if last_only else x)

    def _position_ids(self, nonpad: Tensor) -> Tensor:
        """(B, L) bool -> (B, L) position ids, 0 on padding. "slot", as the baseline: the slot
        number, so with left padding the newest token always has the last position (recency).
        "from_start", as right-padded implementations (Klenitskiy & Vasilev): 1 for the oldest
        kept token, counting up."""
        if self.positions == "slot":
            return torch.arange(1, nonpad.shape[1] + 1, device=nonpad.device) * nonpad
        return nonpad.cumsum(1) * nonpad

    @staticmethod
    def _attention_mask(nonpad: Tensor) -> Tensor:
        """(B, L) -> (B, 1, L, L): causal and padding mask. Each slot also sees itself, which
        changes nothing for real tokens but keeps padding rows from being fully masked (a fully
        masked softmax row is NaN, and NaN times a zero weight would leak into real rows)."""
        n = nonpad.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=nonpad.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=nonpad.device)
        return ((causal & nonpad[:, None, :]) | eye).unsqueeze(1)

    def forward(self, seq: Tensor, token_type: Tensor, pos: Tensor, neg: Tensor | None,
                cand: Tensor | None = None, vectors: bool = False,
                item_mm: ItemMM | None = None) -> tuple:
        """(B, L) int each -> pos_logits, neg_logits (B, L).

        With vectors=True the similarity is left to the loss: -> (feats, pos, neg) (B, L, D)
        each (neg None when not given) and the vectors of the candidate ids cand (M,) -> (M, D)
        (None when not given). Losses go through forward so a DDP wrapper sees the call.
        item_mm: the multimodal rows of (at least) these ids, from `host_item_mm` on the batch's
        host arrays (None: gathered here, which on CUDA copies the ids to the host: a sync)."""
        if self.output_emb is None:
            seq_vecs, pos_vecs, neg_vecs, cand_vecs = self._tied_vectors(seq, token_type, pos, neg,
                                                                         cand, item_mm)
        else:
            seq_vecs = self._item_lookup(seq * (token_type == TOKEN_ITEM), item_mm)
            pos_vecs, neg_vecs, cand_vecs = (None if ids is None else self.output_vectors(ids)
                                             for ids in (pos, neg, cand))
        feats = self.log2feats(seq, token_type, item_part=seq_vecs)
        if vectors:
            return feats, pos_vecs, neg_vecs, cand_vecs
        return self.similarity(feats, pos_vecs), self.similarity(feats, neg_vecs)

    def _tied_vectors(self, seq, token_type, pos, neg, cand, item_mm) -> tuple:
        """The input items' and the scored items' vectors from one lookup of every id, so
        itemdnn runs at most once -> (seq, pos, neg (B, L, D) or None, cand (M, D) or None)."""
        flat = self._item_lookup(item_lookup_ids(seq, token_type, pos, neg, cand), item_mm)
        slots = 2 if neg is None else 3
        per_slot = flat if cand is None else flat[:slots * seq.numel()]
        # unbind, not indexing: each indexing's backward would zero-fill a full-size gradient
        seq_vecs, pos_vecs, *rest = per_slot.view(slots, *seq.shape, -1).unbind(0)
        cand_vecs = None if cand is None else flat[slots * seq.numel():]
        return seq_vecs, pos_vecs, rest[0] if rest else None, cand_vecs

    def output_vectors(self, ids: Tensor) -> Tensor:
        """With separate output embeddings: item ids (...) -> their scoring rows (..., D). A
        cold item (inference: no id-embedding row, see FeatureEmbedder) scores with zeros."""
        emb_id = getattr(self.features, "item_emb_id", None)
        return self.output_emb(ids if emb_id is None else emb_id[ids])

    def _item_lookup(self, ids: Tensor, item_mm: ItemMM | None = None) -> Tensor:
        """ids (...) -> item parts (..., D). When the catalogue is smaller than the number of
        lookups, itemdnn runs once over every item and the batch gathers rows of the result:
        the same numbers, with itemdnn's cost bound by the catalogue instead of B x L x 3."""
        if not self._whole_catalogue(ids.numel()):
            return self.features.items(ids, item_mm)
        num_rows = self.features.item_sparse.shape[0]
        every = self.features.host_mm.gather(np.arange(num_rows), ids.device)  # host ids: no sync
        table = self.features.items(torch.arange(num_rows, device=ids.device), every)
        return gather_rows(table, ids)

    def _whole_catalogue(self, lookups: int) -> bool:
        # with sparse embeddings a whole-catalogue pass would densify the gradient
        return self.features.item_sparse.shape[0] <= lookups and not self.features.item_emb.sparse

    def host_item_mm(self, batch: dict[str, np.ndarray], pin: bool = False) -> ItemMM | None:
        """The `item_mm` forward needs, gathered on the host from the batch's numpy arrays (CPU
        tensors, page-locked when `pin`; host_tables.move_item_mm sends them to the device):
        the rows of every item id forward looks up through the item features: the inputs, pos,
        neg and shared candidates (whichever the batch has), or with a separate output
        embedding the inputs alone. None when there is no multimodal table or forward does not
        need it (the whole-catalogue path gathers every row itself). Runs in the input workers,
        ahead of the step."""
        if not len(self.features.host_mm):
            return None
        if self.output_emb is None:  # forward looks up every id through the item features
            ids = item_lookup_ids(batch["seq"], batch["token_type"], batch["pos"],
                                  batch.get("neg"), batch.get("cand"))
        else:  # the scored ids come from output_emb: only the input items need their rows
            ids = (batch["seq"] * (batch["token_type"] == TOKEN_ITEM)).reshape(-1)
        if self._whole_catalogue(ids.size):
            return None
        return self.features.host_mm.gather_host(ids, pin)

    def predict(self, seq: Tensor, token_type: Tensor) -> Tensor:
        """(B, L) -> (B, D): the representation at the last (newest) slot."""
        item_part = self._item_lookup(seq * (token_type == TOKEN_ITEM))
        return self.log2feats(seq, token_type, item_part, last_only=True)[:, -1, :]

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters with sparse gradients (empty unless sparse_embeddings)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding) and m.sparse]

    def embed_items(self, ids: Tensor) -> Tensor:
        """Item ids (...) -> (..., D), the vectors the similarity scores queries against."""
        return self.features.items(ids) if self.output_emb is None else self.output_vectors(ids)
