"""Multimodal tables kept in host memory (float16 memory maps of the cache) and gathered per
batch, so only the rows a batch uses reach the model's device.

A 1024-d table of 4.8M items is 10 GB in float16: it cannot be a registered buffer moved to the
GPU. `HostTables.gather(ids)` takes the batch's ids while they are still a numpy array on the
host, keeps each distinct id once (`np.unique`), copies those rows into a pinned buffer and sends
it with a non_blocking copy: no GPU sync. The model projects the U distinct rows (U <= ids) and
expands them with the inverse index, the same numbers as projecting every lookup.

The rows are copied by `torch.index_select` straight from the table (for the cache's tables,
from its memory map): a C loop over the rows that releases the GIL and uses torch's intra-op
threads, so it runs beside the training loop in the input worker, ahead of the step, and the loop
only calls `move_item_mm`. Against the former one-`pread`-per-row Python loop (interleaved, a
page-cached 1M x 1024 float16 table, 40,000 random rows a gather, 2 busy cores; medians of 6):
2.0 against 4.0 us a row, and the loop held the GIL for every row.
Accounting: the mapped pages the process has touched, and the cached neighbours the kernel's
fault-around maps with them, count in its resident set as RssFile, up to the whole table once it
is cached: page cache, shared and reclaimable, which the pread loop filled as well without
showing it; the process's own memory (RssAnon) holds a batch's rows only. A table above half the
machine's memory is advised MADV_RANDOM (`random_access`).
"""
from __future__ import annotations

import mmap
import os
import warnings

import numpy as np
import torch
from torch import Tensor

from inputs.unique import sorted_unique

_TORCH_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
                 np.dtype(np.float64): torch.float64}

# What the model receives: the distinct ids (U,) int64 on the device, sorted (the model finds each
# lookup's row by searchsorted, so the host may gather a superset of what one call looks up) and,
# per multimodal feature in schema order, their rows (U, D_f).
ItemMM = tuple[Tensor, tuple[Tensor, ...]]


class HostTables:
    """fid -> (rows, D) table (numpy array or memmap; a CPU tensor is viewed as numpy)."""

    def __init__(self, tables: dict[str, np.ndarray | Tensor]):
        self.tables = {fid: t.numpy() if isinstance(t, Tensor) else t for fid, t in tables.items()}
        self._sources = {fid: _as_tensor(t) for fid, t in self.tables.items()}

    def __len__(self) -> int:
        return len(self.tables)

    def gather(self, ids: np.ndarray, device: torch.device | str) -> ItemMM | None:
        """ids (...) int host array -> (distinct ids (U,) on `device`, rows (U, D_f) per table)."""
        device = torch.device(device)
        return move_item_mm(self.gather_host(ids, pin=device.type == "cuda"), device)

    def gather_host(self, ids: np.ndarray, pin: bool = False) -> ItemMM | None:
        """The host half of gather: distinct ids and their rows as CPU tensors, page-locked when
        `pin` (a CUDA copy follows). Thread-safe: the input workers run it ahead of the step."""
        if not self.tables:
            return None
        uniq = sorted_unique(ids).astype(np.int64)
        uniq_t = torch.from_numpy(uniq)
        rows = tuple(self._rows(src, uniq_t, pin) for src in self._sources.values())
        return (uniq_t.pin_memory() if pin else uniq_t), rows

    def gather_tensor(self, ids: Tensor) -> ItemMM | None:
        """From ids already on the device: one device-to-host copy (a sync on CUDA). For
        evaluation and inference (once per chunk of queries or items), not the training step."""
        if not self.tables:
            return None
        return self.gather(ids.detach().cpu().numpy(), ids.device)

    @staticmethod
    def _rows(source: Tensor, ids: Tensor, pin: bool) -> Tensor:
        out = torch.empty((len(ids), source.shape[1]), dtype=source.dtype, pin_memory=pin)
        return torch.index_select(source, 0, ids, out=out)


def _as_tensor(table: np.ndarray) -> Tensor:
    """A CPU tensor over the table's memory, no copy. torch warns that a read-only array is not
    writable: nothing writes through this view, only index_select reads it."""
    if isinstance(table, np.memmap) and getattr(table, "_mmap", None) is not None \
            and random_access(table.nbytes, _physical_memory()):
        table._mmap.madvise(mmap.MADV_RANDOM)
    if table.dtype not in _TORCH_DTYPES:
        raise TypeError(f"multimodal table dtype {table.dtype}: expected float16/32/64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(table))


def random_access(table_bytes: int, memory_bytes: int) -> bool:
    """Whether to advise a map MADV_RANDOM: only for a table above half the machine's memory.
    Without the advice a fault reads ahead around the row and maps cached neighbours: 2x faster
    gathers once the table is cached (measured: 1.2-2.0 against 4.3 us a row), but a table that
    cannot stay cached would be read 32 pages per row."""
    return table_bytes > memory_bytes // 2


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def move_item_mm(item_mm: ItemMM | None, device: torch.device) -> ItemMM | None:
    """gather_host's result onto `device`: non_blocking copies of pinned buffers on CUDA (the
    buffers are fresh per batch and torch's caching host allocator keeps them until the copy
    has run), nothing on CPU."""
    if item_mm is None or device.type != "cuda":
        return item_mm
    uniq, rows = item_mm
    return (uniq.to(device, non_blocking=True),
            tuple(r.to(device, non_blocking=True) for r in rows))
