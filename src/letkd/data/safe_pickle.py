"""A restricted unpickler for data files that are pickles of plain containers and numpy arrays.

Only the few globals needed to rebuild numpy arrays are resolved; anything else (``os.system``,
``builtins.eval``, arbitrary classes) raises :class:`pickle.UnpicklingError` before it can run.
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
from typing import Any

import numpy as np


def _numpy_core(submodule: str) -> Any:
    # numpy >= 2 names its core package ``numpy._core``; 1.x names it ``numpy.core``
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocols < 3
    ("_codecs", "encode"): codecs.encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _numpy_core("multiarray")._reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _numpy_core("multiarray").scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numpy_core("numeric")._frombuffer


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs builtin containers/scalars and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only allow-listed globals; refuse everything else."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            msg = f"refusing to load global '{module}.{name}' from a data file"
            raise pickle.UnpicklingError(msg) from None


def load_numpy_pickle(data: bytes, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` with :class:`NumpyOnlyUnpickler` (``encoding="bytes"`` as for Python 2 pickles)."""
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding=encoding).load()
