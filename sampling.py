"""Negative sampling for BCE training: one sampled negative per target position.

One class, ``SmartNegativeSampler``, serves every configuration, so the training loop never
branches on which sampler it holds: the uniform baseline is the same class with
``popular_ratio=0`` (see ``build_sampler``).

- ``sample(hist_items (T,), hist_offsets (B+1,), target_mask (B, L)) -> (B, L) int64``: all
  negatives of a batch at once, vectorized. A fixed share of the masked slots (exactly
  ``round(n * current_popular_ratio)``, at random positions) is drawn by item popularity, the
  rest uniformly over the valid items. A negative is never 0, never an invalid item and never
  in that user's history, except when a user has interacted with EVERY valid item: there is no
  negative to give, so the slot is 0 and the caller must mask 0 negatives out of the loss.
- ``random_negative_sampling`` / ``popular_negative_sampling`` / ``mixed_negative_sampling``:
  the plan's single-user API, ``(user_seq, num) -> (num,) int64``, on the same code path (B=1).
- ``set_epoch(epoch)``: curriculum over the popular share (``RATIO_SCHEDULES``).
- ``epoch_stats()``: realized popular share and mean popularity percentile of the negatives.
- ``state_dict()`` / ``load_state_dict()``: a resumed run continues the same random stream.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

POPULARITY_SOURCES: tuple[str, ...] = ("counts", "power_law")  # feeds argparse choices=
RATIO_SCHEDULES: tuple[str, ...] = ("constant", "linear")  # feeds argparse choices=
# Rejection rounds before the exact per-user fallback. Each round redraws only the rejected
# slots, so with histories much smaller than the catalogue the pending set shrinks
# geometrically and the fallback only runs for users who own most of the (popular) items.
MAX_REJECTION_ROUNDS = 20
# Largest per-batch dense membership bitmap (B * (itemnum+1) bools, 16 MiB); above it,
# sorted keys + binary search.
DENSE_TABLE_MAX = 1 << 24


def _check_ratio(name: str, value: float) -> float:
    """Validates a share in [0, 1]; returns it as float."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value


def _weighted_draw(rng: np.random.Generator, ids: np.ndarray, cdf: np.ndarray, n: int) -> np.ndarray:
    """ids (K,), cdf (K,) cumulative positive weights -> (n,) int64 draws, O(log K) each.

    With side="right" a uniform u in [0, cdf[-1]) lands on the first i with cdf[i] > u, so
    every id is hit with probability weight / total.
    """
    u = rng.random(n) * cdf[-1]
    pos = np.searchsorted(cdf, u, side="right")
    # u < cdf[-1] exactly, but the float product can round up onto it.
    np.minimum(pos, ids.size - 1, out=pos)
    return ids[pos]


def _popularity_percentile(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """values (N+1,), valid (N+1,) bool -> (N+1,) float64 percentile in (0, 100), 0 if invalid.

    Ties are averaged (scipy's percentileofscore kind="mean"): an item scores the mean of the
    share strictly below it and the share at or below it, so equal items get equal scores and
    a catalogue of equally popular items scores 50 everywhere.
    """
    ranked = np.sort(values[valid])
    below = np.searchsorted(ranked, values[valid], side="left")
    at_or_below = np.searchsorted(ranked, values[valid], side="right")
    out = np.zeros(values.shape, dtype=np.float64)
    out[valid] = 50.0 * (below + at_or_below) / ranked.size
    return out


def _as_items(user_seq: Iterable[int]) -> np.ndarray:
    """Any iterable of item ids (list, set, array, tensor on CPU) -> (T,) int64."""
    if not isinstance(user_seq, np.ndarray) and not hasattr(user_seq, "__array__"):
        user_seq = list(user_seq)
    return np.asarray(user_seq, dtype=np.int64).reshape(-1)


class SmartNegativeSampler:
    """Uniform / popularity-weighted negative sampler with exact history exclusion.

    Items are 1..itemnum (0 is padding). Arrays indexed by item id have length itemnum+1.
    """

    # Class attributes so a test can force the exact fallback path (rounds 0) or the sorted-key
    # membership path (dense_table_max 0) on an instance.
    max_rejection_rounds: int = MAX_REJECTION_ROUNDS
    dense_table_max: int = DENSE_TABLE_MAX

    def __init__(
        self,
        itemnum: int,
        item_counts: np.ndarray | None = None,
        popularity_source: str = "counts",
        popularity_factor: float = 0.75,
        seed: int = 0,
        popular_ratio: float = 0.0,
        valid_items: np.ndarray | None = None,
        schedule: str = "constant",
        curriculum_epochs: int = 0,
    ) -> None:
        """item_counts (itemnum+1,): training-sequence frequency by item id (index 0 unused).
        valid_items (itemnum+1,) bool: items that may be drawn (default 1..itemnum).
        """
        if int(itemnum) < 1:
            raise ValueError(f"itemnum must be >= 1, got {itemnum}")
        if int(curriculum_epochs) < 0:
            raise ValueError(f"curriculum_epochs must be >= 0, got {curriculum_epochs}")
        self.itemnum = int(itemnum)
        self.popularity_source = _check_choice("popularity_source", popularity_source, POPULARITY_SOURCES)
        self.schedule = _check_choice("schedule", schedule, RATIO_SCHEDULES)
        self.popularity_factor = float(popularity_factor)
        self.popular_ratio = _check_ratio("popular_ratio", popular_ratio)
        self.curriculum_epochs = int(curriculum_epochs)
        self.item_counts = self._check_counts(item_counts)
        self.valid_items = self._check_valid(valid_items)
        self._valid_ids = np.flatnonzero(self.valid_items).astype(np.int64)

        self.popularity = self._compute_item_popularity()
        # Compact table over positive-mass items only: zero-mass ids can then never be drawn.
        self._pop_ids = np.flatnonzero(self.popularity > 0).astype(np.int64)
        self._pop_cdf = np.cumsum(self.popularity[self._pop_ids])
        ranked_by = self.item_counts if self.item_counts is not None else self.popularity
        self._percentile = _popularity_percentile(ranked_by, self.valid_items)

        self.rng = np.random.default_rng(seed)
        self._reset_stats()
        self.set_epoch(1)

    # ----------------------------------------------------------------- configuration

    def _check_counts(self, item_counts: np.ndarray | None) -> np.ndarray | None:
        if item_counts is None:
            return None
        counts = np.asarray(item_counts, dtype=np.float64).reshape(-1)
        if counts.shape != (self.itemnum + 1,):
            raise ValueError(f"item_counts must have length itemnum+1={self.itemnum + 1}, got {counts.shape}")
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError("item_counts must be finite and non-negative")
        return counts

    def _check_valid(self, valid_items: np.ndarray | None) -> np.ndarray:
        """-> (itemnum+1,) bool with index 0 (padding) always invalid."""
        if valid_items is None:
            valid = np.ones(self.itemnum + 1, dtype=bool)
        else:
            valid = np.asarray(valid_items, dtype=bool).reshape(-1).copy()
            if valid.shape != (self.itemnum + 1,):
                raise ValueError(f"valid_items must have length itemnum+1={self.itemnum + 1}, got {valid.shape}")
        valid[0] = False
        if not valid.any():
            raise ValueError("valid_items marks no item in 1..itemnum as valid")
        return valid

    def _compute_item_popularity(self) -> np.ndarray:
        """-> (itemnum+1,) float64 probabilities, summing to 1, zero at 0 and invalid items.

        "counts": count ** factor (word2vec smoothing flattens the head); never-seen items get
        no mass, and all-zero counts fall back to uniform. "power_law": 1 / id ** factor, the
        plan's model, which is only right if ids are assigned in popularity order.
        """
        ids = np.arange(self.itemnum + 1, dtype=np.float64)
        if self.popularity_source == "counts":
            if self.item_counts is None:
                raise ValueError('popularity_source "counts" needs item_counts')
            # Explicit mask: 0 ** 0 == 1 would give unseen items mass when factor is 0.
            seen = self.item_counts > 0
            weight = np.where(seen, self.item_counts, 1.0) ** self.popularity_factor * seen
        else:
            weight = np.where(ids > 0, ids, 1.0) ** -self.popularity_factor
        weight = np.where(self.valid_items, weight, 0.0)
        if weight.sum() <= 0:
            weight = self.valid_items.astype(np.float64)
        return weight / weight.sum()

    # ----------------------------------------------------------------- curriculum

    def set_epoch(self, epoch: int) -> None:
        """Sets the popular share for a 1-based epoch.

        "constant": popular_ratio. "linear": 0 at epoch 1 rising to popular_ratio at epoch
        curriculum_epochs, then flat (easy negatives first, hard ones once the model has a
        rough ranking).
        """
        if int(epoch) < 1:
            raise ValueError(f"epochs are 1-based, got {epoch}")
        self._epoch = int(epoch)
        if self.schedule == "constant":
            self._ratio = self.popular_ratio
        else:
            progress = (self._epoch - 1) / max(1, self.curriculum_epochs - 1)
            self._ratio = self.popular_ratio * min(1.0, progress)

    @property
    def current_popular_ratio(self) -> float:
        return self._ratio

    # ----------------------------------------------------------------- batched hot path

    def sample(
        self,
        hist_items: np.ndarray,
        hist_offsets: np.ndarray,
        target_mask: np.ndarray,
        return_source: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Negatives for a batch; records epoch statistics.

        hist_items (T,) int: the B users' history item ids concatenated (0 entries are ignored);
        hist_offsets (B+1,) int64: user b's history is hist_items[hist_offsets[b]:hist_offsets[b+1]];
        target_mask (B, L) bool: slots that need a negative.
        -> negatives (B, L) int64, 0 where target_mask is False and in the slots of a user who
        has interacted with every valid item (mask those out of the loss). With return_source,
        also (B, L) bool: which slots were drawn by popularity.
        """
        out, source = self._sample(hist_items, hist_offsets, target_mask, self._ratio)
        self._record(out, source, np.asarray(target_mask, dtype=bool))
        return (out, source) if return_source else out

    def sample_shared(self, num: int) -> tuple[np.ndarray, np.ndarray]:
        """num negatives shared by a whole batch (the softmax losses' global negatives).

        -> ids (num,) int64 and log_count (num,) float64, the log of each id's expected number
        of occurrences in such a draw (the logQ correction, comparable across sources).
        Exactly round(num * current_popular_ratio) ids are drawn by popularity, the rest
        uniformly over the valid items, with replacement and without history exclusion: the
        loss masks accidental hits instead. Records epoch statistics like `sample`.
        """
        if int(num) < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        is_pop = self._assign_popular(int(num), self._ratio)
        ids = self._draw(is_pop)
        self._record(ids[None], is_pop[None], np.ones((1, ids.size), dtype=bool))
        n_pop = int(np.count_nonzero(is_pop))
        expected = (n_pop * self.popularity[ids]
                    + (ids.size - n_pop) * self.valid_items[ids] / self._valid_ids.size)
        return ids, np.log(expected)

    def _sample(
        self, hist_items: np.ndarray, hist_offsets: np.ndarray, target_mask: np.ndarray, popular_ratio: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Shared by every public method -> (negatives (B, L) int64, popular (B, L) bool)."""
        hist_items, hist_offsets, target_mask = self._check_batch(hist_items, hist_offsets, target_mask)
        rows, cols = np.nonzero(target_mask)
        is_pop = self._assign_popular(rows.size, popular_ratio)
        cand = self._draw(is_pop)
        table = self._history_table(hist_items, hist_offsets)
        pending = self._reject(rows, cand, is_pop, table)
        if pending.size:
            self._finish_exact(rows, cand, is_pop, pending, hist_items, hist_offsets)
        out = np.zeros(target_mask.shape, dtype=np.int64)
        out[rows, cols] = cand
        source = np.zeros(target_mask.shape, dtype=bool)
        source[rows, cols] = is_pop
        return out, source

    def _check_batch(
        self, hist_items: np.ndarray, hist_offsets: np.ndarray, target_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hist_items = np.asarray(hist_items, dtype=np.int64).reshape(-1)
        hist_offsets = np.asarray(hist_offsets, dtype=np.int64).reshape(-1)
        target_mask = np.asarray(target_mask, dtype=bool)
        if target_mask.ndim != 2 or hist_offsets.shape != (target_mask.shape[0] + 1,):
            raise ValueError(
                f"need target_mask (B, L) and hist_offsets (B+1,), got {target_mask.shape} and {hist_offsets.shape}"
            )
        if np.any(np.diff(hist_offsets) < 0) or hist_offsets[0] < 0 or hist_offsets[-1] > hist_items.size:
            raise ValueError("hist_offsets must be non-decreasing and within hist_items")
        # Out-of-range ids would alias another user's keys in _history_table.
        if hist_items.size and (hist_items.min() < 0 or hist_items.max() > self.itemnum):
            raise ValueError(f"history item ids must be in [0, {self.itemnum}]")
        return hist_items, hist_offsets, target_mask

    def _assign_popular(self, n: int, popular_ratio: float) -> np.ndarray:
        """-> (n,) bool with exactly round(n * popular_ratio) True at random positions.

        Exact rather than Bernoulli so the realized share is the configured one in every batch.
        """
        is_pop = np.zeros(n, dtype=bool)
        k = int(round(n * popular_ratio))
        if 0 < k < n:
            # Order of the chosen positions is irrelevant, and shuffle=False is ~7x cheaper.
            is_pop[self.rng.choice(n, size=k, replace=False, shuffle=False)] = True
        elif k == n:
            is_pop[:] = True
        return is_pop

    def _draw(self, is_pop: np.ndarray) -> np.ndarray:
        """is_pop (n,) bool -> (n,) int64: popularity draws where True, uniform valid elsewhere."""
        out = np.empty(is_pop.size, dtype=np.int64)
        n_pop = int(np.count_nonzero(is_pop))
        if n_pop:
            out[is_pop] = _weighted_draw(self.rng, self._pop_ids, self._pop_cdf, n_pop)
        if n_pop < is_pop.size:
            uniform = self._valid_ids[self.rng.integers(0, self._valid_ids.size, size=is_pop.size - n_pop)]
            if n_pop:
                out[~is_pop] = uniform
            else:
                out[:] = uniform  # the uniform baseline skips the boolean scatter
        return out

    def _history_table(self, hist_items: np.ndarray, hist_offsets: np.ndarray) -> np.ndarray:
        """-> the batch's membership table over keys b * (itemnum+1) + item.

        A dense (B * (itemnum+1),) bool bitmap when it is small (one gather per lookup, ~4x
        faster at ML-1M size); otherwise sorted (T,) int64 keys searched in O(log T), whose
        memory does not grow with the catalogue (TAAC has millions of items).
        """
        lengths = np.diff(hist_offsets)
        users = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
        keys = users * (self.itemnum + 1) + hist_items[hist_offsets[0] : hist_offsets[-1]]
        size = lengths.size * (self.itemnum + 1)
        if size <= self.dense_table_max:
            table = np.zeros(size, dtype=bool)
            table[keys] = True
            return table
        return np.sort(keys)

    def _in_history(self, rows: np.ndarray, cand: np.ndarray, table: np.ndarray) -> np.ndarray:
        """rows (n,), cand (n,) -> (n,) bool: cand[i] is in user rows[i]'s history."""
        keys = rows * (self.itemnum + 1) + cand
        if table.dtype == bool:
            return table[keys]
        if table.size == 0:
            return np.zeros(cand.size, dtype=bool)
        pos = np.searchsorted(table, keys)
        np.minimum(pos, table.size - 1, out=pos)
        return table[pos] == keys

    def _reject(self, rows: np.ndarray, cand: np.ndarray, is_pop: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Redraws history hits in place, each from its slot's own distribution.

        -> (m,) indices into cand still in the history after max_rejection_rounds.
        """
        pending = np.flatnonzero(self._in_history(rows, cand, table))
        for _ in range(self.max_rejection_rounds):
            if pending.size == 0:
                break
            cand[pending] = self._draw(is_pop[pending])
            pending = pending[self._in_history(rows[pending], cand[pending], table)]
        return pending

    def _finish_exact(
        self,
        rows: np.ndarray,
        cand: np.ndarray,
        is_pop: np.ndarray,
        pending: np.ndarray,
        hist_items: np.ndarray,
        hist_offsets: np.ndarray,
    ) -> None:
        """Draws the leftover slots from each user's complement, in place (rare path, per user).

        Same distributions as rejection sampling converges to: popularity restricted to the
        complement (uniform if it has no mass) and uniform over the complement. 0 if empty.
        """
        for b in np.unique(rows[pending]):
            slots = pending[rows[pending] == b]
            seen = np.zeros(self.itemnum + 1, dtype=bool)
            seen[hist_items[hist_offsets[b] : hist_offsets[b + 1]]] = True
            comp = np.flatnonzero(self.valid_items & ~seen).astype(np.int64)
            if comp.size == 0:
                cand[slots] = 0  # user owns every valid item: no negative exists
                continue
            uniform_slots = slots[~is_pop[slots]]
            cand[uniform_slots] = comp[self.rng.integers(0, comp.size, size=uniform_slots.size)]
            pop_slots = slots[is_pop[slots]]
            cand[pop_slots] = self._popular_from(comp, pop_slots.size)

    def _popular_from(self, comp: np.ndarray, n: int) -> np.ndarray:
        """comp (K,) candidate ids -> (n,) int64 by popularity, uniform if comp has no mass."""
        weight = self.popularity[comp]
        keep = weight > 0
        if not keep.any():
            return comp[self.rng.integers(0, comp.size, size=n)]
        return _weighted_draw(self.rng, comp[keep], np.cumsum(weight[keep]), n)

    # ----------------------------------------------------------------- plan's single-user API

    def random_negative_sampling(self, user_seq: Iterable[int], num: int) -> np.ndarray:
        """user_seq (T,) item ids -> (num,) int64 uniform over valid items not in user_seq."""
        return self._sample_user(user_seq, num, 0.0)

    def popular_negative_sampling(self, user_seq: Iterable[int], num: int) -> np.ndarray:
        """user_seq (T,) item ids -> (num,) int64 by popularity over valid items not in user_seq."""
        return self._sample_user(user_seq, num, 1.0)

    def mixed_negative_sampling(
        self, user_seq: Iterable[int], num: int, popular_ratio: float = 0.3, random_ratio: float = 0.7
    ) -> np.ndarray:
        """user_seq (T,) item ids -> (num,) int64: exactly round(num * popular_ratio) popular
        draws, the rest uniform. random_ratio is accepted (and validated) for the plan's
        signature only: the uniform share is whatever popular_ratio leaves.
        """
        _check_ratio("random_ratio", random_ratio)
        return self._sample_user(user_seq, num, _check_ratio("popular_ratio", popular_ratio))

    def _sample_user(self, user_seq: Iterable[int], num: int, popular_ratio: float) -> np.ndarray:
        """B=1 call of the batched path; does not touch the epoch statistics.

        Returns 0s only if user_seq holds every valid item.
        """
        if int(num) < 0:
            raise ValueError(f"num must be >= 0, got {num}")
        hist = _as_items(user_seq)
        offsets = np.array([0, hist.size], dtype=np.int64)
        out, _ = self._sample(hist, offsets, np.ones((1, int(num)), dtype=bool), popular_ratio)
        return out[0]

    # ----------------------------------------------------------------- statistics

    def _reset_stats(self) -> None:
        self._n_slots = 0
        self._n_popular = 0
        self._n_drawn = 0
        self._percentile_sum = 0.0

    def _record(self, out: np.ndarray, source: np.ndarray, target_mask: np.ndarray) -> None:
        self._n_slots += int(np.count_nonzero(target_mask))
        self._n_popular += int(np.count_nonzero(source))
        drawn = out[out > 0]  # 0s are exhausted users: no negative, no popularity
        self._n_drawn += drawn.size
        self._percentile_sum += float(self._percentile[drawn].sum())

    def epoch_stats(self) -> dict[str, float]:
        """-> {"popular_ratio": realized popular share of the masked slots, "neg_popularity":
        mean popularity percentile (0..100) of the drawn negatives} since the last call, then
        resets. nan for a value with nothing recorded.
        """
        stats = {
            "popular_ratio": self._n_popular / self._n_slots if self._n_slots else float("nan"),
            "neg_popularity": self._percentile_sum / self._n_drawn if self._n_drawn else float("nan"),
        }
        self._reset_stats()
        return stats

    # ----------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict:
        """-> JSON-serialisable dict: bit generator state, epoch and current ratio."""
        return {
            "bit_generator": self.rng.bit_generator.state,
            "epoch": self._epoch,
            "current_popular_ratio": self._ratio,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores state_dict() output so the random stream continues where it was saved."""
        self.rng.bit_generator.state = state["bit_generator"]
        self._epoch = int(state["epoch"])
        self._ratio = float(state["current_popular_ratio"])


def build_sampler(
    itemnum: int,
    item_counts: np.ndarray | None,
    valid_items: np.ndarray | None,
    seed: int,
    use_smart_sampling: bool,
    popular_ratio: float,
    popularity_source: str,
    popularity_factor: float,
    schedule: str,
    curriculum_epochs: int,
) -> SmartNegativeSampler:
    """The training loop's sampler: without use_smart_sampling, the uniform baseline (the same
    class at popular ratio 0, so the loop and its statistics are identical for both).
    """
    if not use_smart_sampling:
        popular_ratio, schedule = 0.0, "constant"
    return SmartNegativeSampler(
        itemnum,
        item_counts=item_counts,
        popularity_source=popularity_source,
        popularity_factor=popularity_factor,
        seed=seed,
        popular_ratio=popular_ratio,
        valid_items=valid_items,
        schedule=schedule,
        curriculum_epochs=curriculum_epochs,
    )
