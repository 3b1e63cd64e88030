"""Multimodal tables kept in host memory (float16 memory maps of the cache) and gathered per
batch, so only the rows a batch uses reach the model's device.

A 1024-d table of 4.8M items is 10 GB in float16: it cannot be a registered buffer moved to the
GPU. `HostTables.gather(ids)` takes the batch's ids while they are still a numpy array on the
host, keeps each distinct id once (`np.unique`), copies those rows into a pinned buffer and sends
it with a non_blocking copy: no GPU sync. The model projects the U distinct rows (U <= ids) and
expands them with the inverse index, the same numbers as projecting every lookup.

Pages of a memory-mapped table that a gather touched stay mapped, so the process's resident set
would grow towards the table's size over an epoch; every RELEASE_BYTES of gathered rows they are
unmapped again (madvise DONTNEED on the read-only map: the kernel's page cache keeps them, a
later touch maps them back without disk I/O). The pages a gather may touch are counted from above
(each row may straddle pages), so the mapped part of the tables stays under about RELEASE_BYTES
plus one batch, whatever the table's size.
"""
from __future__ import annotations

import mmap

import numpy as np
import torch
from torch import Tensor

RELEASE_BYTES = 64 << 20
PAGE = mmap.PAGESIZE
_TORCH_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
                 np.dtype(np.float64): torch.float64}

# What the model receives: inverse (...) int64 on the device (position of each lookup among the
# distinct ids) and, per multimodal feature in schema order, the distinct ids' rows (U, D_f).
ItemMM = tuple[Tensor, tuple[Tensor, ...]]


class HostTables:
    """fid -> (rows, D) table (numpy array or memmap; a CPU tensor is viewed as numpy)."""

    def __init__(self, tables: dict[str, np.ndarray | Tensor]):
        self.tables = {fid: t.numpy() if isinstance(t, Tensor) else t for fid, t in tables.items()}
        self._since_release = 0

    def __len__(self) -> int:
        return len(self.tables)

    def gather(self, ids: np.ndarray, device: torch.device | str) -> ItemMM | None:
        """ids (...) int host array -> (inverse (...) on `device`, rows (U, D_f) per table)."""
        if not self.tables:
            return None
        device = torch.device(device)
        uniq, inverse = np.unique(np.asarray(ids).ravel(), return_inverse=True)
        rows = tuple(self._rows(t, uniq, device) for t in self.tables.values())
        return _to_device(torch.from_numpy(inverse.reshape(np.shape(ids))), device), rows

    def gather_tensor(self, ids: Tensor) -> ItemMM | None:
        """From ids already on the device: one device-to-host copy (a sync on CUDA). For
        evaluation and inference (once per chunk of queries or items), not the training step."""
        if not self.tables:
            return None
        return self.gather(ids.detach().cpu().numpy(), ids.device)

    def _rows(self, table: np.ndarray, uniq: np.ndarray, device: torch.device) -> Tensor:
        buf = torch.empty((len(uniq), table.shape[1]), dtype=_TORCH_DTYPES[np.dtype(table.dtype)],
                          pin_memory=device.type == "cuda")
        np.take(table, uniq, axis=0, out=buf.numpy())
        row_pages = table.shape[1] * table.itemsize // PAGE + 2  # at most, for a row anywhere
        table_pages = table.size * table.itemsize // PAGE + 1
        self._since_release += min(len(uniq) * row_pages, table_pages) * PAGE
        if self._since_release >= RELEASE_BYTES:
            self.release_pages()
        return _to_device(buf, device)

    def release_pages(self) -> None:
        """Unmap the pages gathers touched (memory-mapped tables only; a no-op otherwise)."""
        for table in self.tables.values():
            base = table
            while base is not None and not isinstance(base, mmap.mmap):
                base = getattr(base, "base", None)
            if base is not None and hasattr(base, "madvise"):
                base.madvise(mmap.MADV_DONTNEED)
        self._since_release = 0


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    # the buffer is pinned on CUDA and freshly allocated per batch, so an asynchronous copy is
    # safe (torch's caching host allocator keeps it until the copy has run)
    return t.to(device, non_blocking=True) if device.type == "cuda" else t
