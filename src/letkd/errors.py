"""The base of letkd's user-facing errors.

A :class:`LetkdError` is a problem with what the user gave letkd (a file, a cache entry, a setting): its
message is one line saying what is wrong and what to do, and the command line prints it as
``error: <message>`` without a traceback.
"""

from __future__ import annotations


class LetkdError(Exception):
    """An error whose one-line message is meant for the user (printed as ``error: <message>``)."""


class ListedError(LetkdError):
    """A user error with several parts: a headline, one line per item, and an optional closing line.

    The command line prints it as ``error: <headline>`` followed by ``  - <item>`` lines (and the closing
    line indented), so that a problem with many causes or many missing inputs reads as a short list.
    """

    def __init__(self, headline: str, items: list[str], footer: str | None = None) -> None:
        self.headline = " ".join(headline.split())
        self.items = [" ".join(str(item).split()) for item in items]
        self.footer = " ".join(footer.split()) if footer else None
        lines = [self.headline, *(f"  - {item}" for item in self.items)]
        if self.footer:
            lines.append(f"  {self.footer}")
        super().__init__("\n".join(lines))


class ConfigError(LetkdError, ValueError):
    """A config file or override is invalid; the message says where and why."""
