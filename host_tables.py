"""Multimodal tables kept in host memory (float16 memory maps of the cache) and gathered per
batch, so only the rows a batch uses reach the model's device.

A 1024-d table of 4.8M items is 10 GB in float16: it cannot be a registered buffer moved to the
GPU. `HostTables.gather(ids)` takes the batch's ids while they are still a numpy array on the
host, keeps each distinct id once (`np.unique`), copies those rows into a pinned buffer and sends
it with a non_blocking copy: no GPU sync. The model projects the U distinct rows (U <= ids) and
expands them with the inverse index, the same numbers as projecting every lookup.

A table that is a memory-mapped file (the cache's) is read row by row with `pread` into the
buffer instead of through the map: random rows touched through a map bring their neighbours into
the resident set too (the kernel's fault-around maps up to 64 KB of cached pages per fault), so
one 15,000-row batch mapped most of a 2 GB table (measured). With pread the resident set holds
the batch's rows only; the kernel's page cache, shared and reclaimable, keeps the hot rows.
About 3 us a row on a shared 2-core machine (0.1 s for a 38,000-row batch), so training runs
`gather_host` in the input worker, ahead of the step, and the loop only calls `move_item_mm`.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

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
        self._files = {fid: _RowFile.open(t) for fid, t in self.tables.items()}

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
        uniq = np.unique(np.asarray(ids).ravel()).astype(np.int64)
        rows = tuple(self._rows(fid, t, uniq, pin) for fid, t in self.tables.items())
        uniq_t = torch.from_numpy(uniq)
        return (uniq_t.pin_memory() if pin else uniq_t), rows

    def gather_tensor(self, ids: Tensor) -> ItemMM | None:
        """From ids already on the device: one device-to-host copy (a sync on CUDA). For
        evaluation and inference (once per chunk of queries or items), not the training step."""
        if not self.tables:
            return None
        return self.gather(ids.detach().cpu().numpy(), ids.device)

    def _rows(self, fid: str, table: np.ndarray, uniq: np.ndarray, pin: bool) -> Tensor:
        buf = torch.empty((len(uniq), table.shape[1]), dtype=_TORCH_DTYPES[np.dtype(table.dtype)],
                          pin_memory=pin)
        if self._files[fid] is None:
            np.take(table, uniq, axis=0, out=buf.numpy())
        else:
            self._files[fid].read_rows(uniq, buf.numpy())
        return buf


def move_item_mm(item_mm: ItemMM | None, device: torch.device) -> ItemMM | None:
    """gather_host's result onto `device`: non_blocking copies of pinned buffers on CUDA (the
    buffers are fresh per batch and torch's caching host allocator keeps them until the copy
    has run), nothing on CPU."""
    if item_mm is None or device.type != "cuda":
        return item_mm
    uniq, rows = item_mm
    return (uniq.to(device, non_blocking=True),
            tuple(r.to(device, non_blocking=True) for r in rows))


class _RowFile:
    """Rows of a C-ordered table that fills a file from byte `offset`, read with pread."""

    def __init__(self, path: str, offset: int, row_bytes: int):
        self.path, self.offset, self.row_bytes = path, offset, row_bytes
        self.fd = os.open(path, os.O_RDONLY)

    @classmethod
    def open(cls, table: np.ndarray) -> "_RowFile | None":
        """For a whole memory-mapped .npy table (np.load(mmap_mode="r")), else None."""
        path = getattr(table, "filename", None)
        if not isinstance(table, np.memmap) or not path or not table.flags.c_contiguous \
                or table.ndim != 2:
            return None
        row_bytes = table.shape[1] * table.itemsize
        try:
            whole = os.path.getsize(path) == table.offset + table.shape[0] * row_bytes
        except OSError:
            return None
        return cls(path, table.offset, row_bytes) if whole else None

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """rows (U,) int -> out (U, D): one pread per row, sorted rows read in file order."""
        view, n = memoryview(out).cast("B"), self.row_bytes
        for i, r in enumerate(rows.tolist()):
            if os.preadv(self.fd, [view[i * n:(i + 1) * n]], self.offset + r * n) != n:
                raise OSError(f"{self.path}: short read at row {r}")

    def __del__(self):
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)
