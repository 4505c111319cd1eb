"""The base of letkd's user-facing errors.

A :class:`LetkdError` is a problem with what the user gave letkd (a file, a cache entry, a setting): its
message is one line saying what is wrong and what to do, and the command line prints it as
``error: <message>`` without a traceback.
"""

from __future__ import annotations


class LetkdError(Exception):
    """An error whose one-line message is meant for the user (printed as ``error: <message>``)."""
