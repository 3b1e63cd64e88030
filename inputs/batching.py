"""Turn users' flat token ranges into batches of integer arrays, with whole-batch numpy ops.

Sample semantics are the original baseline's (../shared/docs/data-format.md): arrays of
`maxlen + 1` slots, left-padded, filled from the newest token backwards; at slot k the input is
token t[j] and the target t[j+1]; the newest token is only a target. One difference, for data
longer than the window: the profile token stays pinned in slot 0, so user features always count.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dataset import ACTION_NULL, TOKEN_ITEM, SequenceData

SPLITS = ("random_user", "leave_one_out", "competition")
ACTION_CLICK, ACTION_CONVERSION = 1, 2
# The second round's target weights (data-format-v2.md §10): click 1, conversion 2.5.
ACTION_WEIGHTS = {ACTION_CLICK: 1.0, ACTION_CONVERSION: 2.5}


@dataclass
class Ranges:
    """Token ranges [start, end) of some lines, e.g. each user's training part."""
    lines: np.ndarray  # (n,) int64 line indices
    start: np.ndarray  # (n,) int64
    end: np.ndarray    # (n,) int64

    def __len__(self) -> int:
        return len(self.lines)

    def take(self, rows: np.ndarray) -> "Ranges":
        return Ranges(self.lines[rows], self.start[rows], self.end[rows])


@dataclass
class Queries:
    """Evaluation queries: the input range of each line and the item that should come next."""
    inputs: Ranges
    targets: np.ndarray  # (n,) int64 item ids
    weights: np.ndarray | None = None  # (n,) float64 target weights (competition protocol)


@dataclass
class Split:
    train: Ranges
    valid: Ranges | Queries   # held-out users (random_user) or next-item queries (leave_one_out)
    test: Queries | None


def all_lines(seqs: SequenceData) -> Ranges:
    lines = np.arange(seqs.num_lines, dtype=np.int64)
    off = np.asarray(seqs.line_offsets, dtype=np.int64)
    return Ranges(lines, off[:-1].copy(), off[1:].copy())


def random_user_split(seqs: SequenceData, valid_share: float, seed: int) -> Split:
    """The baseline's split (90% of users train, 10% valid), but seeded."""
    ranges = all_lines(seqs)
    order = np.random.default_rng(seed).permutation(len(ranges))
    n_valid = int(round(len(ranges) * valid_share)) if len(ranges) > 1 else 0
    n_valid = min(max(n_valid, 1 if len(ranges) > 1 else 0), len(ranges) - 1)
    return Split(train=ranges.take(np.sort(order[n_valid:])),
                 valid=ranges.take(np.sort(order[:n_valid])), test=None)


def leave_one_out_split(seqs: SequenceData) -> Split:
    """SASRec protocol: train on i_1..i_{n-2}; validate on i_{n-1}; test on i_n.
    Users with fewer than 3 items train on all of them and are not evaluated."""
    ranges = all_lines(seqs)
    n_items = ranges.end - ranges.start - np.asarray(seqs.has_profile, dtype=np.int64)
    evaluated = n_items >= 3
    train_end = np.where(evaluated, ranges.end - 2, ranges.end)
    ev = ranges.take(np.flatnonzero(evaluated))
    tok_id = np.asarray(seqs.tok_id)
    valid = Queries(Ranges(ev.lines, ev.start, ev.end - 2), tok_id[ev.end - 2].astype(np.int64))
    test = Queries(Ranges(ev.lines, ev.start, ev.end - 1), tok_id[ev.end - 1].astype(np.int64))
    return Split(Ranges(ranges.lines, ranges.start, train_end), valid, test)


def competition_split(seqs: SequenceData) -> Split:
    """The competition's target: per user, test = the last conversion (action 2) where one
    exists, else the last click (action 1); valid = the same rule on the tokens before the test
    target; train on the tokens before the earliest evaluated target (events after the test
    target are the future: never used). A target needs an item before it to be evaluated; a
    user without one trains on everything and is not evaluated. Targets carry their weight
    (click 1, conversion 2.5) for the action-weighted metrics."""
    ranges = all_lines(seqs)
    test_t = _competition_targets(seqs, ranges.start, ranges.end)
    test_ok = test_t >= 0
    valid_t = _competition_targets(seqs, ranges.start, np.where(test_ok, test_t, ranges.start))
    valid_ok = valid_t >= 0
    train_end = np.where(valid_ok, valid_t, np.where(test_ok, test_t, ranges.end))
    return Split(Ranges(ranges.lines, ranges.start, train_end),
                 _target_queries(seqs, ranges, valid_t), _target_queries(seqs, ranges, test_t))


def _competition_targets(seqs: SequenceData, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(n,) flat index of each range's target (last conversion, else last click) among its
    item tokens, -1 when it has none or no item token precedes it."""
    lengths = end - start
    flat = _ragged_arange(start, lengths)
    row = np.repeat(np.arange(len(start)), lengths)
    is_item = np.asarray(seqs.tok_type)[flat] == TOKEN_ITEM
    action = np.asarray(seqs.tok_action)[flat]
    target = np.full(len(start), -1, np.int64)
    for kind in (ACTION_CLICK, ACTION_CONVERSION):  # conversions overwrite clicks
        hit = is_item & (action == kind)
        last = np.full(len(start), -1, np.int64)
        np.maximum.at(last, row[hit], flat[hit])
        target = np.where(last >= 0, last, target)
    first_item = np.full(len(start), np.iinfo(np.int64).max)
    np.minimum.at(first_item, row[is_item], flat[is_item])
    return np.where(first_item < target, target, -1)


def _target_queries(seqs: SequenceData, ranges: Ranges, target: np.ndarray) -> Queries:
    rows = np.flatnonzero(target >= 0)
    t = target[rows]
    weights = np.vectorize(ACTION_WEIGHTS.get, otypes=[np.float64])(
        np.asarray(seqs.tok_action)[t]) if len(t) else np.zeros(0)
    return Queries(Ranges(ranges.lines[rows], ranges.start[rows], t),
                   np.asarray(seqs.tok_id)[t].astype(np.int64), weights)


def window_index(start: np.ndarray, end: np.ndarray, pinned_first: np.ndarray,
                 width: int) -> np.ndarray:
    """(n, width) int64 flat token index of each slot, right-aligned, -1 for padding.

    Keeps the newest `width` tokens of [start, end); where the range is longer than the window
    and `pinned_first` is set, slot 0 holds the range's first token (the profile) instead.
    """
    raw = end[:, None] - width + np.arange(width)[None, :]
    idx = np.where(raw >= start[:, None], raw, -1)
    pin = pinned_first & (end - start > width)
    idx[pin, 0] = start[pin]
    return idx


def training_arrays(seqs: SequenceData, ranges: Ranges, maxlen: int) -> dict[str, np.ndarray]:
    """The baseline sample of every range, all (n, maxlen + 1) int64:
    seq, token_type, next_token_type, next_action_type, pos (0 where the next token is no item)."""
    idx = window_index(ranges.start, ranges.end, _has_profile(seqs, ranges), maxlen + 2)
    inp, tgt = idx[:, :-1], idx[:, 1:]
    valid = inp >= 0  # a valid input always has a valid target: the window is right-aligned
    next_type = np.where(valid, seqs.tok_type[tgt], 0).astype(np.int64)
    return {
        "seq": np.where(valid, seqs.tok_id[inp], 0).astype(np.int64),
        "token_type": np.where(valid, seqs.tok_type[inp], 0).astype(np.int64),
        "next_token_type": next_type,
        # a null action type (ACTION_NULL in storage) gives 0 here, as the baseline's sample
        "next_action_type": np.where(valid & (seqs.tok_action[tgt] != ACTION_NULL),
                                     seqs.tok_action[tgt], 0).astype(np.int64),
        "pos": np.where(next_type == TOKEN_ITEM, seqs.tok_id[tgt], 0).astype(np.int64),
    }


def query_arrays(seqs: SequenceData, ranges: Ranges, maxlen: int) -> dict[str, np.ndarray]:
    """Inputs for predicting the token after each range: seq, token_type (n, maxlen + 1), with
    the newest token in the last slot (the baseline's inference dropped it; we do not)."""
    idx = window_index(ranges.start, ranges.end, _has_profile(seqs, ranges), maxlen + 1)
    valid = idx >= 0
    return {"seq": np.where(valid, seqs.tok_id[idx], 0).astype(np.int64),
            "token_type": np.where(valid, seqs.tok_type[idx], 0).astype(np.int64)}


def item_histories(seqs: SequenceData, ranges: Ranges) -> tuple[np.ndarray, np.ndarray]:
    """The item ids in each range, ragged: (flat items, offsets (n+1,)). Profile tokens dropped."""
    lengths = ranges.end - ranges.start
    flat = _ragged_arange(ranges.start, lengths)
    is_item = seqs.tok_type[flat] == TOKEN_ITEM
    row = np.repeat(np.arange(len(ranges)), lengths)
    counts = np.bincount(row[is_item], minlength=len(ranges))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return seqs.tok_id[flat[is_item]].astype(np.int64), offsets


def item_counts(seqs: SequenceData, ranges: Ranges, itemnum: int) -> np.ndarray:
    """(itemnum + 1,) int64 frequency of each item within the ranges (the training part)."""
    items, _ = item_histories(seqs, ranges)
    return np.bincount(items, minlength=itemnum + 1).astype(np.int64)


def _ragged_arange(start: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + n) for s, n) without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    out_start = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) - np.repeat(out_start - start, lengths)


def _has_profile(seqs: SequenceData, ranges: Ranges) -> np.ndarray:
    return np.asarray(seqs.has_profile)[ranges.lines]


class TrainBatches:
    """Shuffled training batches of one rank: integer arrays plus negatives for every target.

    The order of epoch e depends only on (seed, e), so a resumed run replays the same epochs.
    """

    def __init__(self, seqs: SequenceData, ranges: Ranges, maxlen: int, batch_size: int,
                 sampler, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.seqs, self.ranges, self.maxlen = seqs, ranges, maxlen
        self.batch_size, self.sampler, self.seed, self.shuffle = batch_size, sampler, seed, shuffle
        self.rank, self.world_size = rank, world_size

    def _rows(self, epoch: int) -> np.ndarray:
        n = len(self.ranges)
        rows = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                else np.arange(n))
        # Every rank takes the same number of batches, so DDP's collectives stay in step.
        per_rank = -(-n // self.world_size)
        rows = np.resize(rows, per_rank * self.world_size) if n else rows
        return rows[self.rank::self.world_size]

    def __len__(self) -> int:
        per_rank = -(-len(self.ranges) // self.world_size)
        return -(-per_rank // self.batch_size)

    def epoch(self, epoch: int, start: int = 0, assemblers: int = 0):
        """The batches of `epoch`, from batch number `start` on (a mid-epoch resume; the
        sampler must then hold its state as of that batch). With `assemblers` > 0 the windows
        and histories of the coming batches (deterministic numpy work that releases the GIL)
        are built by that many threads ahead, and the negatives are drawn here, in batch order,
        from the one random stream: the same batches as without them."""
        ranges = self._batch_ranges(epoch, start)
        if assemblers <= 0:
            for r in ranges:
                yield self._with_negatives(self.assemble(r))
            return
        with ThreadPoolExecutor(assemblers, thread_name_prefix="batch-assembly") as pool:
            ahead: deque = deque()
            for r in ranges:
                ahead.append(pool.submit(self.assemble, r))
                if len(ahead) > 2 * assemblers:
                    yield self._with_negatives(ahead.popleft().result())
            while ahead:
                yield self._with_negatives(ahead.popleft().result())

    def _batch_ranges(self, epoch: int, start: int):
        rows = self._rows(epoch)
        for b in range(start * self.batch_size, len(rows), self.batch_size):
            yield self.ranges.take(rows[b:b + self.batch_size])

    def make_batch(self, ranges: Ranges) -> dict[str, np.ndarray]:
        return self._with_negatives(self.assemble(ranges))

    def assemble(self, ranges: Ranges) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The deterministic part of a batch: its arrays and its users' item histories."""
        return (training_arrays(self.seqs, ranges, self.maxlen), *item_histories(self.seqs, ranges))

    def _with_negatives(self, assembled) -> dict[str, np.ndarray]:
        """The random part, in batch order: per-position negatives, then the shared ones."""
        batch, hist, offsets = assembled
        batch["neg"] = self.sampler.sample(hist, offsets, batch["pos"] != 0)
        shared = getattr(self.sampler, "shared_negatives", None)  # losses other than BCE-1
        if shared is not None:
            batch.update(shared(batch))
        return batch
