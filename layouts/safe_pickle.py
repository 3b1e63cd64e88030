"""Load the competition's pickles without running code from them.

`indexer.pkl`, `seq_offsets.pkl` and `emb_81_32.pkl` are pickles; a plain `pickle.load` of an
untrusted file executes whatever the file asks for. This unpickler builds only plain containers,
numbers, strings and numpy arrays, and refuses everything else by name.
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
from pathlib import Path

# (module, name) pairs a legitimate data pickle may reference. Everything numpy-related is
# needed to rebuild float32 arrays (emb_81_32.pkl) and numpy scalars; both the numpy 1.x
# (`numpy.core`) and 2.x (`numpy._core`) spellings appear in real files.
_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "tuple"), ("builtins", "int"), ("builtins", "float"), ("builtins", "str"),
    ("builtins", "bytes"), ("builtins", "bool"), ("builtins", "complex"),
    # protocol 0-2 pickles spell bytes (numpy array buffers among them) as _codecs.encode
    ("_codecs", "encode"),
    ("collections", "defaultdict"), ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a global outside the allowed plain-data set."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # Protocol 0-2 pickles use Python 2 names (__builtin__.dict); map them as the base
        # class would, before the check, so legitimate old files load. (Python 2 module names
        # never name a Python 3 module, so mapping them whatever the protocol is safe.)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to load {module}.{name}: only plain data is allowed")


def loads(data: bytes):
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def load(path: str | Path):
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f).load()
