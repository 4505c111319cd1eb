"""Errors raised by the dataset loaders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files were not found; the message lists every place searched and how to get the data."""

    def __init__(self, name: str, looked_in: Sequence[tuple[Path, str]], how_to_get: str):
        self.name = name
        self.how_to_get = how_to_get
        self.looked_in = [(Path(p), why) for p, why in looked_in]
        lines = [f"dataset {name!r} not found. Looked in:"]
        lines += [f"  - {p} ({why})" for p, why in self.looked_in] or ["  (no search location given)"]
        lines.append(how_to_get)
        super().__init__("\n".join(lines))

    def __reduce__(self):
        # keep the exception picklable (DataLoader workers send exceptions across processes)
        return (type(self), (self.name, self.looked_in, self.how_to_get))


class DatasetFormatError(ValueError):
    """A dataset file exists but is corrupt or not in the expected official format."""
