"""Reading config files with bounded work: a size limit, no alias bombs, no runaway nesting.

Configs are data, and a config file is something one may be sent. So before anything else a file over
:data:`MAX_CONFIG_BYTES` is refused (run configs are a few KB), YAML's anchors and aliases may not expand
the data beyond a small multiple of its size (a "billion laughs" file would otherwise exhaust memory when
the config is copied or written back), and nesting is limited. :func:`check_expanded_size` applies the
same bound to configs given as Python dicts.

File paths inside a config (:data:`PATH_KEYS`) are relative to the file that names them
(:func:`absolute_paths`, :func:`resolve_config_path`).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any, get_args

import yaml

from letkd.errors import ConfigError

#: the largest config file read (a run config is 1–3 KB; the paper configs are under 4 KB)
MAX_CONFIG_BYTES = 1 << 20
#: how deeply mappings and lists may nest
MAX_DEPTH = 64
#: values a config may hold once aliases are expanded: this many, plus this multiple of its distinct values
EXPANSION_ALLOWANCE = 10_000
EXPANSION_FACTOR = 10


def read_yaml_file(path: str | Path, what: str = "config") -> Any:
    """The data of the YAML file ``path`` (``yaml.safe_load``), or :class:`ConfigError` saying why not:
    missing, a folder, too large, unreadable, not YAML, nested too deeply or expanding too far."""
    path = Path(path)
    if path.is_dir():
        hint = f": a run folder, pass {path / 'config.yaml'}" if (path / "config.yaml").is_file() else ""
        raise ConfigError(f"{what} file {path} is a folder{hint}")
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: {size / 2**20:.1f} MiB is more than the {MAX_CONFIG_BYTES // 2**20} MiB a {what} file "
            "may have (a run config is a few KB): is it the right file?"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc})") from None
    check_expanded_size(data, str(path))
    return data


def check_expanded_size(data: Any, source: str) -> None:
    """Refuse ``data`` whose shared parts (YAML aliases) would expand it beyond a small multiple of its
    size, or which nests deeper than :data:`MAX_DEPTH`. Cheap: every distinct container is visited once."""
    expanded: dict[int, int] = {}

    def size(node: Any, depth: int) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) in expanded:
            return expanded[id(node)]
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        total = 1 + len(node) + sum(size(child, depth + 1) for child in children)
        expanded[id(node)] = total
        return total

    total = size(data, 0)
    distinct = sum(len(node) + 1 for node in _distinct_containers(data))
    if total > EXPANSION_ALLOWANCE + EXPANSION_FACTOR * distinct:
        raise ConfigError(
            f"{source}: its YAML aliases (*name) expand it to {total:,} values from {distinct:,} written "
            f"ones; a config may expand to at most {EXPANSION_ALLOWANCE:,} + {EXPANSION_FACTOR}x its size "
            "(write the repeated parts out)"
        )


def _distinct_containers(data: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, (dict, list)) and id(node) not in seen:
            seen[id(node)] = node
            stack.extend(node.values() if isinstance(node, dict) else node)
    return list(seen.values())


def unknown_key_hint(model: Any, loc: tuple[Any, ...], prefix: str = "") -> str:
    """``; did you mean 'train.epochs'?`` for an unknown key at ``loc`` of the pydantic ``model`` (the
    close matches among the keys allowed there), or ''."""
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        options = get_args(field.annotation) or (field.annotation,)
        nested = [a for a in options if hasattr(a, "model_fields")]
        if not nested:
            return ""
        model = nested[0]
    allowed = list(getattr(model, "model_fields", {}))
    matches = difflib.get_close_matches(str(loc[-1]), allowed, n=2, cutoff=0.6)
    prefix += "".join(f"{p}." for p in loc[:-1])
    return f"; did you mean {' or '.join(repr(prefix + m) for m in matches)}?" if matches else ""


#: the config entries that hold file paths: relative ones are resolved as the module docstring says
PATH_KEYS = (
    ("model", "checkpoint"),
    ("teacher", "checkpoint"),
    ("teacher", "train_config"),
    ("data", "root"),
)
_SCHEME = re.compile(r"[A-Za-z][\w+.-]+:")  # crd:resnet56, torchvision:..., https://: names, not paths


def absolute_paths(data: dict[str, Any], config_path: Path | None) -> dict[str, Any]:
    """``data`` with the relative paths of :data:`PATH_KEYS` made absolute: against the folder of
    ``config_path`` (the file that names them), or against the working directory when it is None."""
    for section, key in PATH_KEYS:
        node = data.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not _SCHEME.match(value):
            node[key] = str(resolve_config_path(config_path, value, f"{section}.{key}"))
    return data


def resolve_config_path(config_path: Path | None, value: str, key: str = "a path") -> Path:
    """Where the path ``value`` written in ``config_path`` points (absolute, ``~`` expanded).

    Relative paths are relative to the config's folder. Compatibility: when nothing exists there but the
    path exists relative to the working directory (configs written for the old rule), that one is used and
    a warning says how to write it.
    """
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    if config_path is None:
        return Path(os.path.abspath(p))
    folder = config_path.resolve().parent
    beside = folder / p
    if not beside.exists() and p.exists():
        fixed = os.path.relpath(p.resolve(), folder)
        print(
            f"warning: {config_path}: {key} {value!r} is not in the config's folder ({folder}) but in the "
            f"working directory; paths in a config are relative to the config: write {fixed!r}",
            file=sys.stderr,
        )
        return p.resolve()
    return Path(os.path.normpath(beside))
