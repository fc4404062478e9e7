"""Restricted unpickling of dataset pickles (ModelNet40 ``.dat``, ModelNetFewshot ``.pkl``).

Those files hold only numpy arrays, numpy scalars and plain containers, so the unpickler admits
exactly the globals that numpy's own pickles name (numpy 1.x ``numpy.core`` and numpy 2.x
``numpy._core`` spellings) plus builtin container and number types. Any other global (``os.system``,
``builtins.eval``, ``subprocess.Popen``, ...) is refused before it is imported or called.
"""

from __future__ import annotations

import importlib
import io
import pickle
import re
from pathlib import Path
from typing import Any

__all__ = ["UnsafePickleError", "dump_pickle", "load_pickle", "loads_restricted"]

# (module, name) pairs that numpy arrays, dtypes and scalars need, spelled the numpy 2 way.
_NUMPY_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),  # protocol-5 arrays
    }
)
_BUILTIN_NAMES = frozenset(
    {"list", "dict", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes"}
    | {"bytearray", "bool"}
)
_NUMPY1_CORE = re.compile(r"^numpy\.core(?=\.|$)")


class UnsafePickleError(ValueError):
    """A pickle names a global outside the allowlist; nothing from it was imported or run."""


def _canonical(module: str) -> str:
    """numpy 1.x pickles say ``numpy.core.*``; numpy 2 keeps those objects in ``numpy._core``."""
    return _NUMPY1_CORE.sub("numpy._core", module)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only numpy arrays and plain builtins."""

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _BUILTIN_NAMES:
            return getattr(importlib.import_module("builtins"), name)
        if module == "_codecs" and name == "encode":  # bytes in protocol 0-2 pickles
            return importlib.import_module("_codecs").encode
        canonical = _canonical(module)
        if (canonical, name) in _NUMPY_GLOBALS:
            return getattr(importlib.import_module(canonical), name)
        raise UnsafePickleError(
            f"{self.source}: refused to load global {module}.{name}; dataset pickles may only "
            "hold numpy arrays, numpy scalars and plain containers"
        )


def loads_restricted(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the restricted unpickler; ``source`` names it in errors."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, AttributeError, IndexError, KeyError) as exc:
        raise ValueError(f"{source}: truncated or corrupt pickle ({exc!r})") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: corrupt pickle ({exc!r})") from exc


def load_pickle(path: str | Path) -> Any:
    """Read a dataset pickle from ``path`` safely (FileNotFoundError if absent)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pickle file not found")
    return loads_restricted(path.read_bytes(), str(path))


def dump_pickle(obj: Any, path: str | Path) -> None:
    """Write ``obj`` with pickle protocol 4 (arrays in-band, no out-of-band buffers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))
