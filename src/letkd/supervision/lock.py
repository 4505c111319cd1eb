"""The lock on one supervision cache entry: :class:`letkd.locks.EntryLock` (shared with the download cache).

The kernel releases the ``flock`` when its holder exits (kill -9 included); the file is removed on release
and names its holder's pid, which a waiting process prints.
"""

from __future__ import annotations

from letkd.locks import EntryLock

__all__ = ["EntryLock"]
