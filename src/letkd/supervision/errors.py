"""Errors of the supervision cache and fits; each message is one line saying what is wrong and what to do."""

from __future__ import annotations

from letkd.errors import LetkdError


class ArtifactMismatchError(LetkdError, ValueError):
    """A stored artefact's metadata differs from what the caller expects (wrong teacher, tap, K, …)."""


class CorruptArtifactError(LetkdError, ValueError):
    """An artefact file cannot be trusted: unreadable, truncated, not an artefact, or its data checksum
    does not match. The cache moves such a file aside and fits the artefact again."""


class CorruptRowsError(LetkdError, ValueError):
    """A row folder is damaged (a file shorter than its ``meta.json`` says, unreadable metadata). The
    cache moves it aside and extracts the rows again."""


class NonFiniteFeaturesError(LetkdError, ValueError):
    """The teacher's features at a tap contain NaN or infinity, so nothing can be fitted on them."""


class NotEnoughRowsError(LetkdError, ValueError):
    """A K-means fit asks for more centres than there are rows to cluster."""
