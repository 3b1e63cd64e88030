"""Convert public recommendation datasets to the V1 layout (docs/data-format.md).

    python prepare_data.py sasrec         --src ml-1m.txt        --out DIR   # "user item" pairs
    python prepare_data.py movielens-1m   --src ml-1m/           --out DIR   # sasrec/ + grouplens-raw/
    python prepare_data.py movielens-100k --src ml-100k/         --out DIR   # u.data, u.user, u.item
    python prepare_data.py s3rec          --src Beauty.txt       --out DIR   # + Beauty_item2attributes.json

Every record is a click (action type 1). Timestamps are the 1-based position in the user's
sequence when the source has none. Users and items are inserted in ascending raw-id order, so on
the SASRec/S3-Rec files (ids 1..N) user reid == user id and item reid == item id, which keeps
results comparable with other SASRec code. Known datasets are checked against their published
counts (users, items, item records); a mismatch exits 1, a missing or malformed file exits 2.

Feature ids (strings) per converter, following the competition's groups where it has one:
  movielens-1m:   user_sparse 103 gender, 104 age bucket, 105 occupation, 109 zip prefix (2 chars);
                  item_sparse 100 year; item_array 200 genres
  movielens-100k: user_sparse 103 gender, 104 age decade, 105 occupation;
                  item_sparse 100 release year; item_array 200 genres (flag index 0..18)
  s3rec:          item_array 200 attributes (duplicates dropped, order kept)
  sasrec:         none
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from layouts.write_v1 import UserHistory, write_v1_dataset

log = logging.getLogger(__name__)

CLICK = 1
USER_GENDER, USER_AGE, USER_OCCUPATION, USER_ZIP = "103", "104", "105", "109"
ITEM_YEAR, ITEM_GENRES, ITEM_ATTRIBUTES = "100", "200", "200"

# Published counts (users, items, item records), checked after conversion.
KNOWN_COUNTS = {
    ("movielens-1m", None): (6040, 3416, 999_611),
    ("movielens-100k", None): (943, 1682, 100_000),
    ("sasrec", "ml-1m.txt"): (6040, 3416, 999_611),
    ("s3rec", "Beauty.txt"): (22_363, 12_101, 198_502),
    ("s3rec", "Sports_and_Outdoors.txt"): (35_598, 18_357, 296_337),
    ("s3rec", "Toys_and_Games.txt"): (19_412, 11_924, 167_597),
    ("s3rec", "LastFM.txt"): (1090, 3646, 52_551),
}


class DataError(Exception):
    """A missing or malformed source file: reported on one line, exit status 2."""


@dataclass
class Converted:
    """What a converter hands to write_v1_dataset."""

    users: list[UserHistory]
    item_features: dict[int, dict[str, object]]
    feature_kinds: dict[str, str] = field(default_factory=dict)

    def counts(self) -> tuple[int, int, int]:
        return len(self.users), len(self.item_features), sum(len(u.events) for u in self.users)


# ---------------------------------------------------------------------------------------------
# Readers


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    return path


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of every non-blank line, with a progress bar on a terminal."""
    size = _need(path).stat().st_size
    with open(path, encoding=encoding) as f, tqdm(
        total=size, unit="B", unit_scale=True, desc=path.name, disable=None, leave=False
    ) as bar:
        for number, line in enumerate(f, 1):
            bar.update(len(line))  # characters, close enough to bytes for a progress bar
            line = line.strip()
            if line:
                yield number, line


def _ints(path: Path, number: int, parts: list[str]) -> list[int]:
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise DataError(f"{path}:{number}: expected integers, got {' '.join(parts)!r}") from None


def _read_pairs(path: Path) -> dict[int, list[int]]:
    """`user item` per line, time-ordered -> {user: [items]} (a user's lines need not be adjacent)."""
    seqs: dict[int, list[int]] = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected 'user item', got {line!r}")
        user, item = _ints(path, number, parts)
        seqs.setdefault(user, []).append(item)
    return seqs


def _read_id_map(path: Path) -> dict[int, int]:
    """`sasrec_id original_id` per line."""
    out = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected 'sasrec_id original_id', got {line!r}")
        sas, orig = _ints(path, number, parts)
        out[sas] = orig
    return out


def _split(path: Path, number: int, line: str, sep: str, min_fields: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) < min_fields:
        raise DataError(
            f"{path}:{number}: expected at least {min_fields} fields separated by {sep!r}, got {line!r}"
        )
    return parts


def _histories(
    seqs: dict[int, list[int]], timestamps: dict[int, list[int]] | None = None
) -> list[UserHistory]:
    """Users in ascending id order, every record a click; position index when no timestamps."""
    users = []
    for user in sorted(seqs):
        items = seqs[user]
        ts = timestamps[user] if timestamps else range(1, len(items) + 1)
        users.append(UserHistory(user, None, [(item, CLICK, t) for item, t in zip(items, ts)]))
    return users


def _catalogue(seqs: dict[int, list[int]]) -> dict[int, dict[str, object]]:
    """Every item in the sequences, ascending id order, no features yet."""
    return {item: {} for item in sorted({i for items in seqs.values() for i in items})}


# ---------------------------------------------------------------------------------------------
# Converters: src path -> Converted


def convert_sasrec(src: Path) -> Converted:
    """SASRec pairs file: no side features."""
    seqs = _read_pairs(src)
    return Converted(_histories(seqs), _catalogue(seqs))


def convert_movielens_1m(src: Path) -> Converted:
    """`src` holds sasrec/{ml-1m.txt, sas_to_original_*.txt} and grouplens-raw/{users,movies}.dat."""
    seqs = _read_pairs(src / "sasrec" / "ml-1m.txt")
    user_map = _read_id_map(src / "sasrec" / "sas_to_original_users.txt")
    item_map = _read_id_map(src / "sasrec" / "sas_to_original_items.txt")
    raw_users = _read_dat(src / "grouplens-raw" / "users.dat", 5, "latin-1")
    raw_movies = _read_dat(src / "grouplens-raw" / "movies.dat", 3, "latin-1")
    users = _histories(seqs)
    for user in users:
        gender, age, occupation, zipcode = _lookup(raw_users, user_map, user.raw_user_id, "user")[1:5]
        user.features = {
            USER_GENDER: gender,
            USER_AGE: int(age),
            USER_OCCUPATION: int(occupation),
            USER_ZIP: zipcode[:2],
        }
        user.profile_position = "last"
    items = _catalogue(seqs)
    for item in items:
        title, genres = _lookup(raw_movies, item_map, item, "item")[1:3]
        year = re.search(r"\((\d{4})\)\s*$", title)
        items[item] = {ITEM_YEAR: int(year.group(1)) if year else None, ITEM_GENRES: genres.split("|")}
    kinds = {
        USER_GENDER: "user_sparse",
        USER_AGE: "user_sparse",
        USER_OCCUPATION: "user_sparse",
        USER_ZIP: "user_sparse",
    }
    return Converted(users, items, {**kinds, ITEM_YEAR: "item_sparse", ITEM_GENRES: "item_array"})


def _read_dat(path: Path, fields: int, encoding: str) -> dict[int, list[str]]:
    """GroupLens `::`-separated file -> {first field as int: all fields}."""
    rows = {}
    for number, line in _lines(path, encoding):
        parts = _split(path, number, line, "::", fields)
        rows[_ints(path, number, parts[:1])[0]] = parts
    return rows


def _lookup(rows: dict[int, list[str]], id_map: dict[int, int], sas_id: int, what: str) -> list[str]:
    if sas_id not in id_map:
        raise DataError(f"{what} {sas_id} of ml-1m.txt is missing from sas_to_original_{what}s.txt")
    if id_map[sas_id] not in rows:
        raise DataError(f"{what} {sas_id} (original id {id_map[sas_id]}) has no row in grouplens-raw")
    return rows[id_map[sas_id]]


def convert_movielens_100k(src: Path) -> Converted:
    """`src` holds u.data, u.user, u.item (or a grouplens-raw/ folder that does)."""
    if not (src / "u.data").is_file() and (src / "grouplens-raw").is_dir():
        src = src / "grouplens-raw"
    events: dict[int, list[tuple[int, int]]] = {}
    path = src / "u.data"
    for number, line in _lines(path):
        user, item, _rating, ts = _ints(path, number, _split(path, number, line, "\t", 4)[:4])
        events.setdefault(user, []).append((ts, item))
    for user_events in events.values():
        user_events.sort(key=lambda e: e[0])  # stable: ties keep file order
    seqs = {u: [item for _, item in ev] for u, ev in events.items()}
    users = _histories(seqs, {u: [ts for ts, _ in ev] for u, ev in events.items()})
    profiles = {}
    path = src / "u.user"
    for number, line in _lines(path, "latin-1"):
        uid, age, gender, occupation = _split(path, number, line, "|", 5)[:4]
        profiles[int(uid)] = {USER_GENDER: gender, USER_AGE: int(age) // 10, USER_OCCUPATION: occupation}
    for user in users:
        if user.raw_user_id not in profiles:
            raise DataError(f"user {user.raw_user_id} of u.data has no row in {path}")
        user.features = profiles[user.raw_user_id]
    movies = {}
    path = src / "u.item"
    for number, line in _lines(path, "latin-1"):
        parts = _split(path, number, line, "|", 24)
        year = re.search(r"(\d{4})$", parts[2])
        genres = [g for g, flag in enumerate(parts[-19:]) if flag == "1"]
        movies[int(parts[0])] = {ITEM_YEAR: int(year.group(1)) if year else None, ITEM_GENRES: genres}
    items = _catalogue(seqs)
    for item in items:
        if item not in movies:
            raise DataError(f"item {item} of u.data has no row in {path}")
        items[item] = movies[item]
    kinds = {USER_GENDER: "user_sparse", USER_AGE: "user_sparse", USER_OCCUPATION: "user_sparse"}
    return Converted(users, items, {**kinds, ITEM_YEAR: "item_sparse", ITEM_GENRES: "item_array"})


def convert_s3rec(src: Path) -> Converted:
    """`user item1 item2 ...` per line, plus `<name>_item2attributes.json` beside it."""
    seqs: dict[int, list[int]] = {}
    for number, line in _lines(src):
        user, *items = _ints(src, number, line.split())
        if user in seqs:
            raise DataError(f"{src}:{number}: user {user} has a second line")
        seqs[user] = items
    attr_path = _need(src.with_name(f"{src.stem}_item2attributes.json"))
    try:
        attributes = orjson.loads(attr_path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise DataError(f"{attr_path}: not valid JSON ({e})") from None
    items = _catalogue(seqs)
    for item in items:
        attrs = attributes.get(str(item))
        items[item] = {ITEM_ATTRIBUTES: list(dict.fromkeys(attrs))} if attrs else {}
    return Converted(_histories(seqs), items, {ITEM_ATTRIBUTES: "item_array"})


CONVERTERS: dict[str, Callable[[Path], Converted]] = {
    "sasrec": convert_sasrec,
    "movielens-1m": convert_movielens_1m,
    "movielens-100k": convert_movielens_100k,
    "s3rec": convert_s3rec,
}


# ---------------------------------------------------------------------------------------------
# CLI


def check_counts(dataset: str, src: Path, counts: tuple[int, int, int]) -> str | None:
    """A message when `counts` differ from the published ones for this dataset, else None."""
    expected = KNOWN_COUNTS.get((dataset, None)) or KNOWN_COUNTS.get((dataset, src.name))
    if expected is None or tuple(counts) == expected:
        return None
    names = ("users", "items", "item records")
    diff = ", ".join(
        f"{n} {got:,} (expected {want:,})" for n, got, want in zip(names, counts, expected) if got != want
    )
    return f"{dataset} {src}: {diff}; is the source complete and unmodified?"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Convert a public dataset to the V1 data layout.")
    parser.add_argument("dataset", choices=sorted(CONVERTERS), help="source format")
    parser.add_argument(
        "--src", required=True, type=Path, help="source file or folder (see the module docstring)"
    )
    parser.add_argument("--out", required=True, type=Path, help="V1 data directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--skip_check", action="store_true", help="do not compare counts with the published ones"
    )
    parser.add_argument(
        "--layout", choices=("v1", "v2"), default="v1",
        help="v1: seq.jsonl + pickles; v2: the parquet release's folders (seq/, item_feat/, ...)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Convert, check, write; return the exit status (0 ok, 1 counts differ, 2 bad input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    try:
        if not args.src.exists():
            raise DataError(f"missing file: {args.src}")
        converted = CONVERTERS[args.dataset](args.src)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = converted.counts()
    t_read = time.perf_counter() - t0
    print(
        f"{args.dataset}: {counts[0]:,} users, {counts[1]:,} items, {counts[2]:,} item records "
        f"(read in {t_read:.1f}s)"
    )
    problem = None if args.skip_check else check_counts(args.dataset, args.src, counts)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        print(f"error: {args.out} exists and is not empty (use --overwrite)", file=sys.stderr)
        return 2
    users = tqdm(converted.users, desc="writing", unit=" users", disable=None, leave=False)
    if args.layout == "v2":
        from layouts.write_v2 import write_v2_dataset

        summary = write_v2_dataset(
            args.out, users, converted.item_features, converted.feature_kinds, overwrite=args.overwrite
        )
    else:
        summary = write_v1_dataset(
            args.out, users, converted.item_features, converted.feature_kinds, overwrite=args.overwrite
        )
    _report(summary, converted, time.perf_counter() - t0)
    return 0


def _report(summary: dict[str, Any], converted: Converted, seconds: float) -> None:
    vocab = ", ".join(
        f"{fid} ({converted.feature_kinds[fid]}): {n}" for fid, n in summary["feature_vocab"].items()
    )
    print(f"wrote {summary['out_dir']} in {seconds:.1f}s; feature vocabularies: {vocab or 'none'}")
    print(f"reids equal raw ids (users, items): {reids_equal_raw_ids(converted)}")
    if summary.get("num_items_without_features"):
        # The baseline keeps an item record only when its feature dict is non-empty.
        print(
            f"note: {summary['num_items_without_features']:,} items have no features; readers that follow "
            "the baseline skip their records (empty item feature dicts)"
        )


def reids_equal_raw_ids(converted: Converted) -> tuple[bool, bool]:
    """Whether user reid == raw user id and item reid == raw item id for every user and item.

    Users and items are written in ascending id order, so reid k is the k-th smallest id: they are
    equal exactly when the ids are 1..N, as in the SASRec and S3-Rec files.
    """
    users = all(user.raw_user_id == reid for reid, user in enumerate(converted.users, 1))
    items = all(item == reid for reid, item in enumerate(converted.item_features, 1))
    return users, items


if __name__ == "__main__":
    sys.exit(main())
