"""Write a large synthetic V1 (or V2) directory fast, then time dataset.load_dataset on it.

    python make_large_data.py [--users 1000000] [--mean_items 90] [--items 300000] [--out DIR]
    python make_large_data.py --users 20000 --profile     # where the first parse spends its time
    python make_large_data.py --layout v2 --users 1000000 --items 4800000   # the 1M release's shape

--layout v2 writes the public parquet release's shape with the spec's checklist quirks (see
layouts/large_v2.py) and measures the first parse (MB/s of the parquet + indexer input), its peak
RSS (in a fresh process, so nothing else counts), the reload from the cache, and the cache's
bytes per token.

Data (competition-like, ~91 tokens per user with the defaults): each user has U(mean/3,
5 mean/3) item records drawn from a Zipf(1) popularity over the items, ascending timestamps,
action 1 for ~10% of records, and a profile record last; item sparse features 100 (50 values)
and 101 (5,000 values), user sparse features 103 (8 values) and 104 (3 values). seq.jsonl is
compact JSON, byte-for-byte what orjson writes for these records.

Speed: no Python loop over records. Per chunk of users, every record is a row of a uint8 matrix
whose columns are literal bytes and integers as fixed-width null-padded digits; the nulls are
then dropped in one pass, leaving the compact line bytes.

Then: the first load (parse + cache write, a fresh cache folder) as MB/s of seq.jsonl, the second
load (from the cache), and the cache's bytes per token. Output goes to /tmp by default, never the
repo; --keep leaves it there.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pickle
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from dataset import load_dataset
from training.cli_types import int_at_least, non_negative_int, positive_int

ITEM_FEATURES = {"100": 50, "101": 5000}  # fid -> vocabulary
USER_FEATURES = {"103": 8, "104": 3}
START_TS = 1_714_000_000
RAW_ITEM_BASE = 10_000_000  # raw creative id = reid + this


def _ints(values: np.ndarray, width: int) -> np.ndarray:
    """(n,) non-negative ints -> (n, width) uint8: zeros (dropped later), then the decimal
    digits. Digit by digit from the right: 3x faster than numpy's astype("S<w>")."""
    out = np.empty((len(values), width), np.uint8)
    v = values.astype(np.int64)
    for k in range(width - 1, -1, -1):
        q = v // 10
        digit = (v - q * 10 + 48).astype(np.uint8)
        out[:, k] = digit if k == width - 1 else np.where(v > 0, digit, 0)
        v = q
    return out


def _lit(text: bytes, n: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text, np.uint8), (n, len(text)))


def _width(max_value: int) -> int:
    return len(str(int(max_value)))


def chunk_bytes(user_ids: np.ndarray, lengths: np.ndarray, items: np.ndarray, actions: np.ndarray,
                stamps: np.ndarray, item_feats: np.ndarray, user_feats: np.ndarray,
                widths: dict) -> tuple[bytes, np.ndarray]:
    """The seq.jsonl lines of some users -> (bytes, (n,) line lengths).

    user_ids, lengths (n,); items, actions, stamps (sum(lengths),) per item record; item_feats
    (I+1, 2) and user_feats (U+1, 2) feature value ids by reid. A record row is
    `[u,i,null,{"100":a,"101":b},act,ts],` (the line's first also opens with `[`) or the profile
    `[u,null,{"103":g,"104":h},null,null,ts]]\n` that closes the line.
    """
    n, total = len(user_ids), len(items)
    first = np.zeros(total, bool)
    first[np.cumsum(lengths) - lengths] = True
    rec_user = np.repeat(user_ids, lengths)
    w = widths
    f_item = item_feats[items]
    item_rows = np.concatenate([
        np.where(first, ord("["), 0).astype(np.uint8)[:, None],
        _lit(b"[", total), _ints(rec_user, w["u"]), _lit(b",", total), _ints(items, w["i"]),
        _lit(b',null,{"100":', total), _ints(f_item[:, 0], 2), _lit(b',"101":', total),
        _ints(f_item[:, 1], 4), _lit(b"},", total), _ints(actions, 1), _lit(b",", total),
        _ints(stamps, 10), _lit(b"],", total)], axis=1)
    f_user = user_feats[user_ids]
    last_ts = stamps[np.cumsum(lengths) - 1]
    profile_rows = np.concatenate([
        _lit(b"[", n), _ints(user_ids, w["u"]), _lit(b',null,{"103":', n), _ints(f_user[:, 0], 1),
        _lit(b',"104":', n), _ints(f_user[:, 1], 1), _lit(b"},null,null,", n),
        _ints(last_ts, 10), _lit(b"]]\n", n)], axis=1)
    width = max(item_rows.shape[1], profile_rows.shape[1])
    rows = np.zeros((total + n, width), np.uint8)
    line_end = np.cumsum(lengths + 1) - 1  # the profile row closes each line
    is_item = np.ones(total + n, bool)
    is_item[line_end] = False
    rows[is_item, :item_rows.shape[1]] = item_rows
    rows[line_end, :profile_rows.shape[1]] = profile_rows
    row_bytes = (rows != 0).sum(1)
    line_bytes = np.add.reduceat(row_bytes, np.concatenate([[0], line_end[:-1] + 1]))
    flat = rows.ravel()
    return flat[flat != 0].tobytes(), line_bytes


def write_large_v1(out: Path, users: int, mean_items: int, num_items: int, seed: int,
                   chunk_users: int = 20_000) -> dict:
    """Write the V1 directory (seq.jsonl, seq_offsets.pkl, indexer.pkl, item_feat_dict.json)."""
    rng = np.random.default_rng(seed)
    item_feats = np.zeros((num_items + 1, 2), np.int64)
    item_feats[1:] = rng.integers(1, list(ITEM_FEATURES.values()), size=(num_items, 2),
                                  endpoint=True)
    user_feats = np.zeros((users + 1, 2), np.int64)
    user_feats[1:] = rng.integers(1, list(USER_FEATURES.values()), size=(users, 2), endpoint=True)
    popularity_cdf = np.cumsum(1.0 / np.arange(1, num_items + 1))
    popularity_cdf /= popularity_cdf[-1]
    popular_order = rng.permutation(num_items) + 1  # which reid has popularity rank r
    widths = {"u": _width(users), "i": _width(num_items)}
    out.mkdir(parents=True, exist_ok=True)
    offsets, position, tokens = [], 0, 0
    with open(out / "seq.jsonl", "wb") as f:
        for start in range(1, users + 1, chunk_users):
            ids = np.arange(start, min(start + chunk_users, users + 1))
            lengths = rng.integers(max(1, mean_items // 3), 5 * mean_items // 3, size=len(ids),
                                   endpoint=True)
            total = int(lengths.sum())
            ranks = np.minimum(np.searchsorted(popularity_cdf, rng.random(total)), num_items - 1)
            steps = rng.integers(1, 3600, size=total)
            elapsed, line_start = np.cumsum(steps), np.cumsum(lengths) - lengths
            first_step = elapsed[line_start] - steps[line_start]  # elapsed before each line
            stamps = START_TS + elapsed - np.repeat(first_step, lengths)
            actions = (rng.random(total) < 0.1).astype(np.int64)
            data, line_bytes = chunk_bytes(ids, lengths, popular_order[ranks], actions, stamps,
                                           item_feats, user_feats, widths)
            f.write(data)
            offsets.extend((position + np.cumsum(line_bytes) - line_bytes).tolist())
            position += len(data)
            tokens += total + len(ids)
    with open(out / "seq_offsets.pkl", "wb") as f:
        pickle.dump(offsets, f, protocol=4)
    fids = list(ITEM_FEATURES) + list(USER_FEATURES)
    vocab = list(ITEM_FEATURES.values()) + list(USER_FEATURES.values())
    indexer = {"u": {f"user_{k}": k for k in range(1, users + 1)},
               "i": {RAW_ITEM_BASE + k: k for k in range(1, num_items + 1)},
               "f": {fid: {f"v{k}": k for k in range(1, v + 1)} for fid, v in zip(fids, vocab)}}
    with open(out / "indexer.pkl", "wb") as f:
        pickle.dump(indexer, f, protocol=4)
    feats = {str(k): {"100": int(a), "101": int(b)}
             for k, (a, b) in enumerate(item_feats[1:].tolist(), 1)}
    (out / "item_feat_dict.json").write_bytes(orjson.dumps(feats))
    return {"users": users, "items": num_items, "tokens": tokens,
            "seq_jsonl_bytes": (out / "seq.jsonl").stat().st_size}


def cache_bytes_per_token(cache_root: Path, tokens: int) -> dict:
    (folder,) = [p for p in cache_root.iterdir() if p.is_dir() and not p.name.count(".tmp")]
    size = lambda *names: sum((folder / f"{n}.npy").stat().st_size for n in names  # noqa: E731
                              if (folder / f"{n}.npy").exists())
    per_token = size("tok_id", "tok_type", "tok_action")  # tok_type is rebuilt on load, not stored
    per_line = size("line_offsets", "line_user", "has_profile")
    return {"cache_folder": str(folder), "token_arrays_bytes_per_token": per_token / tokens,
            "all_sequence_arrays_bytes_per_token": (per_token + per_line) / tokens}


def time_loads(data_dir: Path, cache_dir: Path, profile: bool, top: int = 25) -> dict:
    profiler = cProfile.Profile() if profile else None
    start, cpu_start = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    first = load_dataset(data_dir, cache_dir)
    if profiler:
        profiler.disable()
    first_s, first_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = len(first.seqs.tok_id)
    del first
    start = time.perf_counter()
    second = load_dataset(data_dir, cache_dir)
    open_s = time.perf_counter() - start
    checksum = int(np.asarray(second.seqs.tok_id, dtype=np.int64).sum())  # touch every page
    read_s = time.perf_counter() - start
    result = {"first_load_seconds": first_s, "first_load_cpu_seconds": first_cpu,
              "second_load_seconds": open_s,
              "second_load_and_read_seconds": read_s, "tokens_loaded": tokens,
              "checksum": checksum}
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
        result["profile"] = text.getvalue()
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=positive_int, default=1_000_000, help="users (lines of seq.jsonl)")
    p.add_argument("--mean_items", type=positive_int, default=90, help="mean item records per user")
    p.add_argument("--items", type=int_at_least(2), default=300_000, help="catalogue size")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds everything generated")
    p.add_argument("--out", default=None, help="output folder (default: a new one under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the data and its cache afterwards")
    p.add_argument("--profile", action="store_true", help="cProfile the first load (tottime)")
    p.add_argument("--json", default=None, help="write the numbers here as JSON")
    p.add_argument("--layout", choices=("v1", "v2"), default="v1",
                   help="v1: seq.jsonl + pickles (--mean_items); v2: the parquet release's shape "
                        "(~91 events per user, 13 item and 8 user features, candidate/)")
    p.add_argument("--conversions", type=float, default=0.0,
                   help="v2: share of events with action type 2 (10M-like data)")
    p.add_argument("--mm", action="store_true",
                   help="v2: also write mm_emb/emb_81_32_parquet (87 %% of the items)")
    args = p.parse_args(argv)
    if args.layout == "v2":
        return main_v2(args)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="taac-large-", dir="/tmp"))
    if (out / "seq.jsonl").exists():
        raise SystemExit(f"{out} already holds a dataset; pass another --out")
    try:
        start, cpu_start = time.perf_counter(), time.process_time()
        info = write_large_v1(out / "data", args.users, args.mean_items, args.items, args.seed)
        info["generate_seconds"] = time.perf_counter() - start
        info["generate_cpu_seconds"] = time.process_time() - cpu_start
        info.update(time_loads(out / "data", out / "cache", args.profile))
        assert info["tokens_loaded"] == info["tokens"], "the parse lost tokens"
        mb = info["seq_jsonl_bytes"] / 1e6
        info.update({"seq_jsonl_mb": mb, "generate_mb_per_s": mb / info["generate_seconds"],
                     "first_parse_mb_per_s": mb / info["first_load_seconds"],
                     "first_parse_mb_per_cpu_s": mb / info["first_load_cpu_seconds"],
                     **cache_bytes_per_token(out / "cache", info["tokens"])})
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    report(info)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    return info


def _load_in_child(data_dir: Path, cache_dir: Path, touch: bool) -> dict:
    """load_dataset in a fresh interpreter: its peak RSS is the load's alone (plus imports,
    reported as rss_after_imports_mb)."""
    code = f"""
import json, re, sys, time
def hwm():  # peak RSS of this process image (ru_maxrss would include the parent's, from fork)
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) / 1024
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import numpy as np
from dataset import load_dataset
import layouts.v2
base = hwm()
t, c = time.perf_counter(), time.process_time()
d = load_dataset({str(data_dir)!r}, {str(cache_dir)!r})
t_ = d.seqs.tok_id  # summed in slices: an int64 copy of all of it would inflate the RSS
s = sum(int(t_[i:i + (1 << 24)].sum(dtype=np.int64)) for i in range(0, len(t_), 1 << 24)) if {touch} else 0
print(json.dumps({{"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                  "tokens": len(d.seqs.tok_id), "checksum": s, "rss_after_imports_mb": base,
                  "peak_rss_mb": hwm()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"load failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main_v2(args) -> dict:
    from layouts.large_v2 import write_large_v2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="taac-large-v2-", dir="/tmp"))
    if (out / "data").exists():
        raise SystemExit(f"{out} already holds a dataset; pass another --out")
    try:
        start = time.perf_counter()
        info = write_large_v2(out / "data", args.users, args.items, args.seed, args.conversions,
                              args.mm)
        info["generate_seconds"] = time.perf_counter() - start
        first = _load_in_child(out / "data", out / "cache", touch=False)
        again = _load_in_child(out / "data", out / "cache", touch=True)
        assert first["tokens"] == again["tokens"] == info["tokens"], "the parse lost tokens"
        mb = (info["seq_bytes"] + info["feat_bytes"] + info["indexer_bytes"]) / 1e6
        info.update({"input_mb": mb, "seq_mb": info["seq_bytes"] / 1e6,
                     "first_load_seconds": first["seconds"],
                     "first_parse_mb_per_s": mb / first["seconds"],
                     "first_parse_seq_mb_per_s": info["seq_bytes"] / 1e6 / first["seconds"],
                     "first_load_peak_rss_mb": first["peak_rss_mb"],
                     "rss_after_imports_mb": first["rss_after_imports_mb"],
                     "reload_seconds_touching_every_token": again["seconds"],
                     "reload_peak_rss_mb": again["peak_rss_mb"],
                     **cache_bytes_per_token(out / "cache", info["tokens"])})
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    report_v2(info)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    return info


def report_v2(info: dict) -> None:
    print(f"V2: {info['users']:,} users, {info['items']:,} items, {info['tokens']:,} tokens "
          f"({info['tokens'] / info['users']:.1f} per user, {info['null_actions']:,} null action "
          f"types); input {info['input_mb']:,.0f} MB (seq {info['seq_mb']:,.0f} MB, indexer "
          f"{info['indexer_bytes'] / 1e6:,.0f} MB); generated in {info['generate_seconds']:.0f} s")
    print(f"first load:  {info['first_load_seconds']:8.1f} s  ({info['first_parse_mb_per_s']:.1f} "
          f"MB/s of the input, {info['first_parse_seq_mb_per_s']:.1f} MB/s of seq/; parse + "
          f"cache write); peak RSS {info['first_load_peak_rss_mb']:,.0f} MB "
          f"({info['rss_after_imports_mb']:,.0f} MB after imports)")
    print(f"reload:      {info['reload_seconds_touching_every_token']:8.3f} s  (memory-mapped "
          f"cache, reading every token id); peak RSS {info['reload_peak_rss_mb']:,.0f} MB")
    print(f"cache: {info['token_arrays_bytes_per_token']:.2f} bytes/token in tok_id/"
          f"tok_action, {info['all_sequence_arrays_bytes_per_token']:.2f} with the per-line arrays")


def report(info: dict) -> None:
    print(f"{info['users']:,} users, {info['items']:,} items, {info['tokens']:,} tokens "
          f"({info['tokens'] / info['users']:.1f} per user); "
          f"seq.jsonl {info['seq_jsonl_mb']:,.0f} MB")
    print(f"generate:    {info['generate_seconds']:8.1f} s  ({info['generate_mb_per_s']:.0f} MB/s; "
          f"{info['generate_cpu_seconds']:.1f} CPU s)")
    print(f"first load:  {info['first_load_seconds']:8.1f} s  "
          f"({info['first_parse_mb_per_s']:.1f} MB/s of seq.jsonl, parse + cache write; "
          f"{info['first_load_cpu_seconds']:.1f} CPU s = {info['first_parse_mb_per_cpu_s']:.1f} "
          "MB per CPU s)")
    print(f"second load: {info['second_load_seconds']:8.3f} s  (memory-mapped cache; "
          f"{info['second_load_and_read_seconds']:.3f} s reading every token id)")
    print(f"cache: {info['token_arrays_bytes_per_token']:.2f} bytes/token in tok_id/"
          f"tok_action, {info['all_sequence_arrays_bytes_per_token']:.2f} with the per-line arrays")
    if "profile" in info:
        print(info["profile"])


if __name__ == "__main__":
    main()
