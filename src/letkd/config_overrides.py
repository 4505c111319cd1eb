"""Command-line overrides of a config: ``a.b.c=value`` items (YAML values) applied to its data.

A part that is a number indexes a list (``method.params.layers.0.alpha=0.5``): the item must exist. Missing
sections are created; an override into a scalar is an error.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from letkd.errors import ConfigError

__all__ = ["apply_overrides", "parse_override"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into the key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (missing sections are created).

    A numeric part indexes a list (``method.params.layers.0.alpha=0.5``): the item must exist.
    """
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = out
        for n, part in enumerate(path):
            last = n == len(path) - 1
            if isinstance(node, list):
                index = _list_index(text, path[n - 1], part, len(node))
                if last:
                    node[index] = value
                else:
                    node = node[index]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {path[n - 1]!r} is not a section or a list")
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return out


def _list_index(text: str, name: str, part: str, length: int) -> int:
    """``part`` as an index into the list ``name`` of ``length`` items (else :class:`ConfigError`)."""
    if not part.isdigit():
        raise ConfigError(
            f"override {text!r}: {name!r} is a list; the next part must be an item number, not {part!r}"
        )
    index = int(part)
    if index >= length:
        items = f"items 0-{length - 1}" if length else "no items"
        raise ConfigError(f"override {text!r}: {name!r} has {length} item(s) ({items}), no item {index}")
    return index
