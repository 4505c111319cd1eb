"""Open registries: the one registry idiom of methods, models and datasets, and the user code that fills them.

Each kind has one :class:`Registry` (``letkd.methods.base``, ``letkd.models.registry``,
``letkd.data.registry``) with a ``register_<kind>(name)`` decorator. Code outside letkd adds entries in one of
two ways, and neither needs letkd to be edited (docs/extending.md):

- a config's ``imports: [my_kd.methods, ...]`` names modules that :func:`import_modules` imports before
  anything is built; importing them runs their ``@register_*`` decorators. Modules are found on the Python
  path, then in the working directory (as ``python -m letkd`` and the processes of ``letkd sweep`` do);
- an installed distribution declares entry points in the groups ``letkd.methods``, ``letkd.models`` or
  ``letkd.datasets``: ``my_kd = "my_kd.methods"`` (the entry point's name is the name configs use; its value
  the module, or an object in it, that registers it). An entry point is loaded the first time its name is
  looked up and not yet registered.

Config keys stay data: ``imports`` holds module names, never code or file paths.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from letkd.errors import LetkdError

T = TypeVar("T")

MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
DOCS = "docs/extending.md"


class PluginError(LetkdError, ValueError):
    """A module named in ``imports:`` or an entry point could not be loaded, or registered a taken name."""


class UnknownNameError(LetkdError, KeyError, ValueError):
    """A name that no registry entry, plugin or entry point provides; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def _origin(item: object) -> str:
    """``module.qualname`` of a registered class or function (for messages)."""
    module = getattr(item, "__module__", None) or "?"
    return f"{module}.{getattr(item, '__qualname__', type(item).__name__)}"


class Registry(Generic[T]):
    """Names -> registered objects of one kind, open to ``imports:`` modules and entry points of ``group``."""

    def __init__(self, kind: str, group: str, unknown_error: type[UnknownNameError] = UnknownNameError):
        self.kind = kind
        self.group = group
        self.unknown_error = unknown_error
        self._items: dict[str, T] = {}
        self._origins: dict[str, object] = {}

    def add(self, name: str, item: T, origin: object | None = None) -> T:
        """Register ``item`` as ``name``; a name already taken by another object is a :class:`PluginError`."""
        old = self._items.get(name)
        origin = item if origin is None else origin
        if old is not None and self._origins[name] is not origin:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by {_origin(self._origins[name])} and by "
                f"{_origin(origin)}; rename one of them"
            )
        self._items[name] = item
        self._origins[name] = origin
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated class or function as ``name``."""

        def deco(item: T) -> T:
            return self.add(name, item)

        return deco

    def names(self) -> list[str]:
        """Registered names, sorted (entry points not yet loaded are not listed)."""
        return sorted(self._items, key=str.lower)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str) -> T:
        """The object registered as ``name``, loading an entry point of that name first if needed."""
        if name not in self._items:
            self._load_entry_points(name)
        try:
            return self._items[name]
        except KeyError:
            raise self.unknown_error(self.unknown_message(name)) from None

    def unknown_message(self, name: str, alternatives: str = "") -> str:
        """``unknown <kind> 'x'; known <kind>s: …`` plus how to add one's own."""
        return (
            f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}{alternatives}. "
            f"For a {self.kind} of your own, name its module in the config's 'imports:' or install it "
            f"under the entry-point group '{self.group}' ({DOCS})"
        )

    def _load_entry_points(self, name: str) -> None:
        for ep in importlib.metadata.entry_points(group=self.group, name=name):
            dist = getattr(ep.dist, "name", None) or "?"
            try:
                ep.load()
            except PluginError:
                raise
            except Exception as exc:  # noqa: BLE001  (any failure of foreign code becomes one clear line)
                raise PluginError(
                    f"entry point {ep.name} = {ep.value} (group {self.group}, distribution {dist}) failed "
                    f"to load: {type(exc).__name__}: {exc}"
                ) from exc
            if name not in self._items:
                raise PluginError(
                    f"entry point {ep.name} = {ep.value} (group {self.group}, distribution {dist}) loaded "
                    f"but registered no {self.kind} named {name!r}; decorate it with "
                    f"@register_{self.kind}({name!r})"
                )


def import_modules(names: Iterable[str], source: str = "config") -> None:
    """Import the modules of a config's ``imports:`` list (each once), so that they register their entries.

    Modules are looked up on ``sys.path``, then in the working directory. Failures raise
    :class:`PluginError` naming ``source``, the module and the cause.
    """
    for name in names:
        if not MODULE_NAME.fullmatch(name):
            raise PluginError(f"{source}: imports: {name!r} is not a module name (like my_kd.methods)")
        if name in sys.modules:
            continue
        _ensure_working_directory_on_path()
        try:
            importlib.import_module(name)
        except PluginError as exc:
            raise PluginError(f"{source}: imports: {name}: {exc}") from exc
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name) and name[len(exc.name) :][:1] in ("", "."):
                raise PluginError(
                    f"{source}: imports: no module named {exc.name!r} (looked on the Python path and in "
                    f"{os.getcwd()}); install it, or add its folder to PYTHONPATH"
                ) from None
            raise PluginError(f"{source}: imports: {name} failed to import: {exc}") from exc
        except Exception as exc:  # noqa: BLE001  (any failure of foreign code becomes one clear line)
            cause = f"{type(exc).__name__}: {exc}"
            raise PluginError(f"{source}: imports: {name} failed to import: {cause}") from exc


def _ensure_working_directory_on_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # last: installed packages and the standard library keep precedence
