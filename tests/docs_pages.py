"""Pages of the docs checked as a whole: Python blocks run (or checked statically), YAML blocks loaded as
configs, every line and name handed to :mod:`docs_check`; plus the ``--help`` examples and the configs'
comments. The rules are in :mod:`docs_check`'s docstring."""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import re
from pathlib import Path

from docs_check import (
    FILE_HEADER,
    LINK,
    REPO_PATH,
    ROOT,
    Block,
    check_command,
    check_letkd,
    check_name,
    check_repo_path,
    command_lines,
    inline_code,
    letkd_class_names,
    split_page,
    subparser,
)

# ---------------------------------------------------------------------------------------------- python


def _resolve_attr(node: ast.AST, env: dict[str, object]) -> tuple[bool, object]:
    """(known, value) of a Name/Attribute chain rooted at an imported name."""
    if isinstance(node, ast.Name):
        return (node.id in env, env.get(node.id))
    if isinstance(node, ast.Attribute):
        known, base = _resolve_attr(node.value, env)
        if not known:
            return False, None
        if not hasattr(base, node.attr) and inspect.ismodule(base):
            with contextlib.suppress(ImportError):
                importlib.import_module(f"{base.__name__}.{node.attr}")
        if not hasattr(base, node.attr):
            raise AttributeError(f"{ast.unparse(node)}: {node.attr!r} does not exist")
        return True, getattr(base, node.attr)
    return False, None


def check_python_static(code: str) -> list[str]:
    """Imports resolve, attributes of imported names exist, calls of imported callables bind."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"syntax error: {exc}"]
    env: dict[str, object] = {}
    problems = []
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module = importlib.import_module(alias.name)
                    env[alias.asname or alias.name.split(".")[0]] = (
                        module if alias.asname else importlib.import_module(alias.name.split(".")[0])
                    )
            elif isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        importlib.import_module(f"{node.module}.{alias.name}")
                    env[alias.asname or alias.name] = getattr(module, alias.name)
        except ImportError as exc:
            problems.append(f"{ast.unparse(node)}: {exc}")
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.Attribute):
                _resolve_attr(node, env)
            elif isinstance(node, ast.Call) and not any(isinstance(a, ast.Starred) for a in node.args):
                known, func = _resolve_attr(node.func, env)
                if known and callable(func) and not any(k.arg is None for k in node.keywords):
                    with contextlib.suppress(ValueError):  # builtins without a signature
                        inspect.signature(func).bind_partial(*node.args, **{k.arg: 0 for k in node.keywords})
        except (AttributeError, TypeError) as exc:
            problems.append(f"{ast.unparse(node)[:80]}: {exc}")
    return sorted(set(problems))


# ---------------------------------------------------------------------------------------------- pages


def _python_block(block: Block, namespace: dict, scratch: Path) -> list[str]:
    header = FILE_HEADER.match(block.text.splitlines()[0]) if block.text.strip() else None
    if header:
        (scratch / header.group(1)).write_text(block.text)
        return check_python_static(block.text)
    if block.not_run:
        return check_python_static(block.text)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block.text, f"<block at line {block.line}>", "exec"), namespace)  # noqa: S102
    except Exception as exc:  # noqa: BLE001  (the block's failure is the problem reported)
        return [f"{type(exc).__name__}: {exc}"]
    return []


def _yaml_block(block: Block, scratch: Path) -> list[str]:
    from letkd.config import load_config
    from letkd.methods import get_method

    header = FILE_HEADER.match(block.text.splitlines()[0]) if block.text.strip() else None
    path = scratch / (header.group(1) if header else f"block{block.line}.yaml")
    path.write_text(block.text)
    try:
        cfg = load_config(path)
        get_method(cfg.method.name).parse_params(cfg.method.params)
    except Exception as exc:  # noqa: BLE001  (reported as the block's problem)
        return [f"not a valid config: {type(exc).__name__}: {exc}"]
    return []


def check_page(text: str, scratch: Path, page_dir: Path = ROOT / "docs") -> list[str]:
    """Every problem of one Markdown page, as ``line N: what``. Run with ``scratch`` as working directory
    (it needs a ``configs`` link to the repository's configs)."""
    from letkd.plugins import Registry

    blocks, prose = split_page(text)
    problems: list[tuple[int, str]] = []
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks:
        if block.lang == "python":
            found = _python_block(block, namespace, scratch)
        elif block.lang in ("yaml", "yml"):
            found = _yaml_block(block, scratch)
        elif block.lang in ("json", "toml"):
            found = []
        else:
            found = [p for line in command_lines(block.text) for p in check_command(line)]
        problems += [(block.line, p) for p in found]
    classes = letkd_class_names()
    groups = {r.group for r in _registries() if isinstance(r, Registry)}
    for n, span in inline_code(prose):
        if span.startswith("letkd "):
            problems += [(n, p) for p in check_letkd(span.split()[1:], full_parse=False)]
        problems += [(n, p) for p in check_name(span, classes, groups)]
    for n, line in enumerate(text.splitlines(), 1):
        problems += [(n, p) for m in REPO_PATH.finditer(line) for p in check_repo_path(m.group(1))]
        for m in LINK.finditer(line):
            target = m.group(1)
            if not re.match(r"^[a-z]+:", target) and not (page_dir / target).exists():
                problems.append((n, f"broken link: {target}"))
    return [f"line {n}: {p}" for n, p in sorted(set(problems))]


def _registries() -> list[object]:
    from letkd.data.registry import DATASETS
    from letkd.methods.base import METHODS
    from letkd.models.registry import MODELS

    return [METHODS, MODELS, DATASETS]


def help_epilog_problems() -> list[str]:
    """The example command lines in every sub-command's ``--help``."""
    from letkd.cli import COMMANDS

    problems = []
    for name in COMMANDS:
        epilog = subparser(name).epilog or ""  # type: ignore[union-attr]
        for line in command_lines(epilog):
            problems += [f"letkd {name} --help: {line}: {p}" for p in check_command(line)]
    return problems


def config_comment_problems() -> list[str]:
    """A config's comments must state the number of templates (``K n``) its layers use."""
    import yaml

    problems = []
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        text = path.read_text()
        comments = "\n".join(ln for ln in text.splitlines() if ln.lstrip().startswith("#"))
        stated = {int(k) for k in re.findall(r"\bK\s*=?\s*(\d+)", comments)}
        layers = ((yaml.safe_load(text) or {}).get("method") or {}).get("params", {}).get("layers", [])
        used = {layer["num_templates"] for layer in layers if "num_templates" in layer}
        if used and not stated <= used:
            name = path.relative_to(ROOT)
            problems.append(f"{name}: comments say K {sorted(stated)}, layers use {sorted(used)}")
    return problems
