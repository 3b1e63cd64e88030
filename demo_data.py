"""The built-in demo dataset: small, deterministic, and with signal a SASRec model can learn.

Generative process (all from one seed):
- items belong to NUM_TOPICS topics; popularity is Zipf over a random ranking of all items;
- each item has a fixed "successor" in its topic (a random cycle through the topic);
- a user prefers 1-3 topics; the next item is the successor of the previous one with
  probability SUCCESSOR_PROB (if not seen yet), else a popularity-weighted draw from a preferred
  topic; no item twice per user; 5..80 items;
- clicks are likelier for a user's favourite topic and for users with a high click rate;
  about 1% of action types are null; timestamps ascend.

Features (ids as strings, groups as in the V1 layout):
  item_sparse "100" topic, "101" brand (mostly of the item's topic);
  item_array "102" 2-3 tags from the topic's pool; item_continual "103" log price (topic-dependent;
  continual values enter itemdnn raw, as in the baseline, so they are kept near unit scale);
  user_sparse "104" favourite topic, "105" age bucket; user_array "106" interests (preferred
  topics, sometimes one more); user_continual "107" click propensity;
  multimodal "81": 32-d float32 = topic centroid + noise, missing for ~10% of items.

Every user draws from its own generator seeded by (seed, user index), so the inference directory
can replay a training user's history exactly and continue it.

    python demo_data.py --out data/demo [--infer_out data/demo_infer]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layouts import safe_pickle
from training.cli_types import int_at_least, non_negative_int, positive_int
from layouts.write_v1 import UserHistory, write_inference_dir, write_v1_dataset

log = logging.getLogger(__name__)

NUM_TOPICS = 20
BRANDS_PER_TOPIC = 5
TAGS_PER_TOPIC = 8
MM_DIM = 32
SUCCESSOR_PROB = 0.5
MIN_LEN, MAX_LEN = 5, 80
# Two items per topic, and a user of MAX_LEN distinct items must find them: fewer items crash.
MIN_ITEMS = max(NUM_TOPICS * 2, MAX_LEN)
NULL_ACTION_PROB = 0.01
MM_MISSING_PROB = 0.10
FIRST_PROFILE_PROB = 0.1  # the profile record "can be anywhere": put some first
START_TS = 1_714_000_000

FEATURE_KINDS = {
    "100": "item_sparse",
    "101": "item_sparse",
    "102": "item_array",
    "103": "item_continual",
    "104": "user_sparse",
    "105": "user_sparse",
    "106": "user_array",
    "107": "user_continual",
}
MM_FEATURE_ID = "81"

# Separate seed streams: the catalogue, training users, cold items, cold users, inference picks.
_WORLD, _USER, _COLD_ITEM, _COLD_USER, _PICK = range(5)


@dataclass
class _World:
    """The item catalogue and the process that draws sequences from it. Arrays are (num_items,)."""

    cids: np.ndarray  # raw creative ids, int64, increasing
    topic: np.ndarray
    brand: np.ndarray
    tags: list[list[int]]
    price: np.ndarray  # nan = missing
    successor: np.ndarray  # item index -> item index in the same topic
    topic_items: list[np.ndarray]  # topic -> its item indices
    topic_cdf: list[np.ndarray]  # topic -> cumulative popularity of topic_items (ends at 1)
    emb: np.ndarray  # (num_items, MM_DIM) float32
    has_emb: np.ndarray  # bool


def write_demo_dataset(
    out_dir: str | os.PathLike,
    num_users: int = 3000,
    num_items: int = 2000,
    seed: int = 0,
    overwrite: bool = False,
    layout: str = "v1",
) -> dict[str, Any]:
    """Write the demo training directory and return the writer's summary.

    layout "v1": write_v1_dataset; "v2": layouts.write_v2 (the parquet release's layout), whose
    candidate/ holds every catalogue item plus some cold ones (unseen OIDs and values)."""
    if num_items < MIN_ITEMS or num_users < 1:
        raise ValueError(f"need num_items >= {MIN_ITEMS} and num_users >= 1")
    world = _make_world(num_items, seed)
    users = (_train_user(world, seed, idx) for idx in range(num_users))
    mm = {MM_FEATURE_ID: {int(world.cids[i]): world.emb[i] for i in np.flatnonzero(world.has_emb)}}
    if layout == "v2":
        from layouts.write_v2 import write_v2_dataset
        cold = _make_cold_items(world, seed, max(5, num_items // 50))
        catalogue = {**_item_features(world), **cold["features"]}
        candidates = [{"creative_id": cid, "retrieval_id": rid, "features": feats}
                      for rid, (cid, feats) in enumerate(catalogue.items())]
        return write_v2_dataset(out_dir, users, _item_features(world), FEATURE_KINDS, mm,
                                candidates=candidates, overwrite=overwrite)
    return write_v1_dataset(
        out_dir, users, _item_features(world), FEATURE_KINDS, mm, "pkl", overwrite=overwrite
    )


def write_demo_inference_dir(
    out_dir: str | os.PathLike,
    train_dir: str | os.PathLike,
    seed: int = 0,
    num_users: int = 200,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write an inference directory for a demo training directory made with the same `seed`.

    About 95% of the users are training users whose histories continue with 1-5 newer items
    (some of them cold items); the rest are cold users (raw ids "cold_user_NNNN"). Cold items
    have creative ids above every training id, and some carry unseen brand/tag/age values.
    The candidates are every training item plus the cold items.
    """
    indexer = safe_pickle.load(Path(train_dir) / "indexer.pkl")
    num_train_users, num_items = len(indexer["u"]), len(indexer["i"])
    world = _make_world(num_items, seed)
    if sorted(indexer["i"]) != world.cids.tolist():
        raise ValueError(f"{train_dir} was not written by write_demo_dataset with seed={seed}")
    cold = _make_cold_items(world, seed, max(5, num_items // 50))
    num_cold_users = max(1, num_users // 20)
    pick = np.random.default_rng([seed, _PICK])
    warm = np.sort(
        pick.choice(num_train_users, size=min(num_users - num_cold_users, num_train_users), replace=False)
    )
    users = [_infer_user(world, cold, seed, int(idx)) for idx in warm]
    users += [_cold_user(world, cold, seed, k) for k in range(num_cold_users)]
    catalogue = {**_item_features(world), **cold["features"]}
    candidates = [
        {"creative_id": cid, "retrieval_id": rid, "features": feats}
        for rid, (cid, feats) in enumerate(catalogue.items(), 1)
    ]
    return write_inference_dir(
        out_dir,
        train_dir,
        users,
        candidates,
        item_features=cold["features"],
        feature_kinds=FEATURE_KINDS,
        overwrite=overwrite,
    )


# ---------------------------------------------------------------------------------------------
# The catalogue


def _make_world(num_items: int, seed: int) -> _World:
    rng = np.random.default_rng([seed, _WORLD])
    cids = 100_000 + np.arange(num_items, dtype=np.int64) * 7 + rng.integers(0, 7, num_items)
    topic = rng.integers(0, NUM_TOPICS, num_items)
    topic[:NUM_TOPICS] = np.arange(NUM_TOPICS)  # every topic has an item
    own_brand = topic * BRANDS_PER_TOPIC + rng.integers(0, BRANDS_PER_TOPIC, num_items)
    brand = np.where(
        rng.random(num_items) < 0.9, own_brand, rng.integers(0, NUM_TOPICS * BRANDS_PER_TOPIC, num_items)
    )
    n_tags = rng.integers(2, 4, num_items)
    tag_pick = (
        rng.random((num_items, TAGS_PER_TOPIC)).argsort(axis=1)[:, :3] + (topic * TAGS_PER_TOPIC)[:, None]
    )
    global_tag = np.where(
        rng.random(num_items) < 0.1, rng.integers(0, NUM_TOPICS * TAGS_PER_TOPIC, num_items), -1
    )
    tags = [
        row[:n].tolist() + ([g] if g >= 0 and g not in row[:n] else [])
        for row, n, g in zip(tag_pick, n_tags, global_tag)
    ]
    price_mu = rng.normal(0.0, 0.8, NUM_TOPICS)
    price = np.round(rng.normal(price_mu[topic], 0.4), 3)  # a log price: near unit scale
    price[rng.random(num_items) < 0.03] = np.nan
    popularity = 1.0 / (1.0 + rng.permutation(num_items)) ** 1.0  # Zipf over a random ranking
    successor = np.empty(num_items, dtype=np.int64)
    topic_items, topic_cdf = [], []
    for t in range(NUM_TOPICS):
        members = np.flatnonzero(topic == t)
        cycle = rng.permutation(members)
        successor[cycle] = np.roll(cycle, -1)
        cdf = np.cumsum(popularity[members])
        topic_items.append(members)
        topic_cdf.append(cdf / cdf[-1])
    centroids = rng.normal(0.0, 1.0, (NUM_TOPICS, MM_DIM))
    emb = (centroids[topic] + 0.5 * rng.normal(0.0, 1.0, (num_items, MM_DIM))).astype(np.float32)
    has_emb = rng.random(num_items) >= MM_MISSING_PROB
    return _World(cids, topic, brand, tags, price, successor, topic_items, topic_cdf, emb, has_emb)


def _item_features(world: _World) -> dict[int, dict[str, object]]:
    """Raw item features by raw creative id, in creative id order (= item reid order)."""
    out = {}
    for i, cid in enumerate(world.cids.tolist()):
        price = float(world.price[i])
        out[cid] = {
            "100": int(world.topic[i]),
            "101": f"brand_{world.brand[i]}",
            "102": [f"tag_{t}" for t in world.tags[i]],
            "103": None if np.isnan(price) else price,
        }
    return out


def _make_cold_items(world: _World, seed: int, count: int) -> dict[str, Any]:
    """Items unseen in training: ids above the catalogue's, some with unseen brand/tag strings."""
    rng = np.random.default_rng([seed, _COLD_ITEM])
    cids = int(world.cids[-1]) + 1 + np.arange(count) * 3
    topic = rng.integers(0, NUM_TOPICS, count)
    features, by_topic = {}, {}
    for k, (cid, t) in enumerate(zip(cids.tolist(), topic.tolist())):
        brand = (
            f"brand_new_{k}"
            if rng.random() < 0.3
            else f"brand_{t * BRANDS_PER_TOPIC + rng.integers(BRANDS_PER_TOPIC)}"
        )
        tags = [f"tag_{t * TAGS_PER_TOPIC + j}" for j in rng.choice(TAGS_PER_TOPIC, 2, replace=False)]
        if rng.random() < 0.3:
            tags.append(f"tag_new_{k}")
        features[cid] = {
            "100": t,
            "101": brand,
            "102": tags,
            "103": round(float(rng.normal(0.0, 0.5)), 3),  # a log price, kept near unit scale
        }
        by_topic.setdefault(t, []).append(cid)
    return {"features": features, "by_topic": by_topic}


# ---------------------------------------------------------------------------------------------
# Users


def _draw_user(
    world: _World, rng: np.random.Generator, length: int
) -> tuple[dict[str, object], list[int], list, np.ndarray]:
    """Draw one user's profile and `length` events: (raw features, item indices, actions, timestamps)."""
    n_pref = int(rng.integers(1, 4))
    pref = rng.choice(NUM_TOPICS, n_pref, replace=False)
    pref_p = np.array([0.6, 0.3, 0.1][:n_pref])
    pref_p /= pref_p.sum()
    click_rate = float(rng.uniform(0.05, 0.4))
    interests = pref.tolist()
    if rng.random() < 0.3:
        interests.append(int(rng.integers(NUM_TOPICS)))
    features: dict[str, object] = {
        "104": int(pref[0]),
        "105": None if rng.random() < 0.05 else int(rng.integers(0, 7)),
        "106": list(dict.fromkeys(interests)),
        "107": round(click_rate + float(rng.normal(0, 0.02)), 4),
    }
    items = _draw_items(world, rng, pref, pref_p, length)
    fav = world.topic[items] == pref[0]
    p_click = np.clip(click_rate * np.where(fav, 1.6, 0.7), 0, 1)
    actions: list = (rng.random(length) < p_click).astype(int).tolist()
    for k in np.flatnonzero(rng.random(length) < NULL_ACTION_PROB):
        actions[k] = None
    ts = START_TS + int(rng.integers(0, 30 * 86400)) + np.cumsum(rng.integers(5, 7200, length))
    return features, items, actions, ts


def _draw_items(
    world: _World, rng: np.random.Generator, pref: np.ndarray, pref_p: np.ndarray, length: int
) -> list[int]:
    """Item indices of one sequence: successor of the previous item, else a popular preferred-topic item."""
    follow = rng.random(length) < SUCCESSOR_PROB
    pref_cdf = np.cumsum(pref_p)
    seen: set[int] = set()
    out: list[int] = []
    prev = -1
    for k in range(length):
        item = -1
        if prev >= 0 and follow[k] and int(world.successor[prev]) not in seen:
            item = int(world.successor[prev])
        tries = 0
        while item < 0 and tries < 8:  # rejection draws; a repeat is redrawn
            t = pref[min(int(np.searchsorted(pref_cdf, rng.random(), side="right")), len(pref) - 1)]
            members = world.topic_items[t]
            cand = int(
                members[
                    min(
                        int(np.searchsorted(world.topic_cdf[t], rng.random(), side="right")), len(members) - 1
                    )
                ]
            )
            item = -1 if cand in seen else cand
            tries += 1
        if item < 0:  # heavy users exhaust their topics' popular items: any unseen item will do
            pool = np.concatenate([world.topic_items[t] for t in pref])
            pool = pool[~np.isin(pool, list(seen))]
            if len(pool) == 0:
                pool = np.setdiff1d(np.arange(len(world.cids)), list(seen))
            item = int(pool[rng.integers(len(pool))])
        seen.add(item)
        out.append(item)
        prev = item
    return out


def _user_length(rng: np.random.Generator) -> int:
    return int(min(MAX_LEN, MIN_LEN + rng.geometric(1 / 18) - 1))


@dataclass
class _Replay:
    """One training user's draw: history (first `length` events) plus 1-5 future events."""

    rng: np.random.Generator  # continues after the draw (used to pick cold items at inference)
    features: dict[str, object]
    items: list[int]
    actions: list
    ts: np.ndarray
    length: int
    profile_position: str


def _replay(world: _World, seed: int, idx: int) -> _Replay:
    rng = np.random.default_rng([seed, _USER, idx])
    length = _user_length(rng)
    future = int(rng.integers(1, 6))
    position = "first" if rng.random() < FIRST_PROFILE_PROB else "last"
    features, items, actions, ts = _draw_user(world, rng, length + future)
    return _Replay(rng, features, items, actions, ts, length, position)


def _events(world: _World, r: _Replay, end: int) -> list[tuple[int, int | None, int]]:
    return [
        (int(world.cids[i]), a, int(t))
        for i, a, t in zip(r.items[:end], r.actions[:end], r.ts[:end].tolist())
    ]


def _train_user(world: _World, seed: int, idx: int) -> UserHistory:
    r = _replay(world, seed, idx)
    return UserHistory(f"user_{idx:06d}", r.features, _events(world, r, r.length), r.profile_position)


def _infer_user(world: _World, cold: dict[str, Any], seed: int, idx: int) -> UserHistory:
    """A training user's history continued by its 1-5 future items; ~10% of those become cold items."""
    r = _replay(world, seed, idx)
    events = _events(world, r, len(r.items))
    for k in range(r.length, len(events)):
        pool = cold["by_topic"].get(int(world.topic[r.items[k]]))
        if pool and r.rng.random() < 0.1:
            events[k] = (pool[int(r.rng.integers(len(pool)))], *events[k][1:])
    return UserHistory(f"user_{idx:06d}", r.features, events, r.profile_position)


def _cold_user(world: _World, cold: dict[str, Any], seed: int, k: int) -> UserHistory:
    """A user unseen in training; some have an unseen age bucket (99)."""
    rng = np.random.default_rng([seed, _COLD_USER, k])
    features, items, actions, ts = _draw_user(world, rng, _user_length(rng))
    if rng.random() < 0.5:
        features["105"] = 99
    events = [(int(world.cids[i]), a, int(t)) for i, a, t in zip(items, actions, ts.tolist())]
    return UserHistory(f"cold_user_{k:04d}", features, events)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Write the deterministic demo dataset in the V1 layout.")
    parser.add_argument("--out", required=True, help="training data directory to write")
    parser.add_argument("--infer_out", default=None, help="also write an inference directory here")
    parser.add_argument("--num_users", type=positive_int, default=3000, help="number of training users")
    parser.add_argument("--num_items", type=int_at_least(MIN_ITEMS), default=2000, help="number of items in the catalogue")
    parser.add_argument("--num_infer_users", type=positive_int, default=200, help="users in the inference directory")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the whole generative process")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output directories")
    parser.add_argument("--layout", choices=("v1", "v2"), default="v1",
                        help="v1: seq.jsonl + pickles; v2: the parquet release's folders, with "
                             "candidate/ (--infer_out is V1 only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    summary = write_demo_dataset(
        args.out, args.num_users, args.num_items, args.seed, overwrite=args.overwrite,
        layout=args.layout,
    )
    log.info(
        "wrote %s: %d users, %d items, %d item records in %.2fs",
        args.out,
        summary["num_users"],
        summary["num_items"],
        summary["num_item_records"],
        time.perf_counter() - t0,
    )
    if args.infer_out:
        infer = write_demo_inference_dir(
            args.infer_out, args.out, args.seed, args.num_infer_users, overwrite=args.overwrite
        )
        log.info(
            "wrote %s: %d users, %d candidates (%d cold), %d cold items in sequences",
            args.infer_out,
            infer["num_lines"],
            infer["num_candidates"],
            infer["cold_candidates"],
            infer["cold_items"],
        )
        summary["inference"] = infer
    return summary


if __name__ == "__main__":
    main()
