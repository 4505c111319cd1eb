"""Checks that the commands, snippets, paths and names in README.md and docs/*.md are real.

The rules (docs/architecture.md, "Docs are tested"), applied to one Markdown page read top to bottom:

- ```python blocks run, in order, in one namespace per page, in a scratch folder (with a ``configs`` link
  to the repository's). A block whose first line is ``# name.py`` is a file the page tells you to write:
  it is written into the scratch folder instead (commands and configs of the page may import it). A block
  preceded by ``<!-- not run: reason -->`` (it needs data, a GPU, a trained run) is checked statically: its
  imports resolve, the attributes it reads from imported names exist, and calls of imported callables
  pass arguments their signatures accept.
- ```yaml blocks are configs (or fragments): each must load with ``load_config`` (a first line
  ``# name.yaml`` also writes it as that file), with its method's params validated.
- lines starting with ``letkd`` (also ``$ letkd``, ``python -m letkd``, ``torchrun ... -m letkd``) in any
  other block, in inline code and in every sub-command's ``--help`` epilog: the sub-command and every
  option exist, argparse accepts the line, ``--help`` runs, config paths under configs/ exist (globs
  match), and ``key=value`` overrides load with those configs (with a placeholder config: the keys exist).
  ``make T`` names a Makefile target; ``python -m benchmarks.run_all NAME`` a benchmark.
- everywhere: repository paths (``configs/...``, ``docs/*.md``, ``src/...py``, ...) and relative Markdown
  links exist; ``letkd.x.y`` names in inline code resolve; ``SomethingError`` names in inline code are
  classes letkd (or Python) defines.

Nothing slow runs: commands are parsed and their configs loaded, never executed (``tests/test_pipeline.py``
runs every digits config end to end).
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import functools
import importlib
import io
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_RUN = re.compile(r"<!--\s*not run:\s*\S.*-->")
FILE_HEADER = re.compile(r"#\s*([\w./-]+\.(?:py|yaml))\s*$")
REPO_DIRS = ("configs/", "docs/", "src/", "tests/", "benchmarks/")
REPO_PATH = re.compile(r"(?<![\w./~$-])((?:configs|docs|src|tests|benchmarks)/[\w<>*{},.+/-]*)")
FILE_SUFFIX = re.compile(r"\.(py|md|yaml|sh|toml|cff|json|txt)$")
LETKD_NAME = re.compile(r"^letkd(\.[A-Za-z_]\w*)+")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    not_run: bool


def split_page(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks of a Markdown page, and its other lines (prose) with their numbers."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            start, lang = i, stripped[3:].strip()
            body = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            blocks.append(Block(start + 1, lang, "\n".join(body) + "\n", bool(NOT_RUN.search(before))))
        else:
            prose.append((i + 1, lines[i]))
        i += 1
    return blocks, prose


def inline_code(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """``code`` spans of the prose lines."""
    return [(n, m.group(1)) for n, line in prose for m in re.finditer(r"`([^`]+)`", line)]


def command_lines(text: str) -> list[str]:
    """The command lines of a shell block: continuations joined, prompts and trailing comments removed."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = re.sub(r"^\$\s+", "", line)
        line = re.sub(r"\s+#.*$", "", line)
        if line:
            out.append(line)
    return out


# ---------------------------------------------------------------------------------------------- commands


def subparser(name: str) -> argparse.ArgumentParser | None:
    from letkd.cli import build_parser

    parser = build_parser(name)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return None


def _expand(pattern: str) -> list[str]:
    """``a/{x,y}/<pair>/*.yaml`` -> glob patterns ``a/x/*/*.yaml``, ``a/y/*/*.yaml``."""
    pattern = re.sub(r"<[^>]*>", "*", pattern)
    parts = re.split(r"\{([^{}]*)\}", pattern)
    options = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
    return ["".join(choice) for choice in itertools.product(*options)]


def check_repo_path(path: str) -> list[str]:
    """A path under a repository folder must exist (configs/: always; elsewhere: paths to files)."""
    path = path.rstrip(".,;:)")
    if not path.startswith(REPO_DIRS) or "..." in path or "…" in path:
        return []
    if not (path.startswith("configs/") or FILE_SUFFIX.search(path)):
        return []
    for pattern in _expand(path):
        if not (any(ROOT.glob(pattern)) if "*" in pattern else (ROOT / pattern).exists()):
            return [f"no such file or folder in the repository: {path}"]
    return []


def _override_key_problem(key: str) -> str | None:
    """Whether a dotted key exists in the config schema (free-form dicts accept anything below them)."""
    from pydantic import BaseModel

    from letkd.config import RunConfig

    model: type[BaseModel] = RunConfig
    for part in key.split("."):
        field = model.model_fields.get(part)
        if field is None:
            return f"unknown config key {key!r}"
        sub = next((a for a in getattr(field.annotation, "__args__", (field.annotation,))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)  # fmt: skip
        if sub is None:
            return None  # a value or a free-form dict (method.params, model.kwargs)
        model = sub
    return None


def _configs_and_overrides(
    tokens: list[str], takes_value: frozenset[str] = frozenset()
) -> tuple[list[str], list[str], list[str]]:
    """The configs, the overrides and the ``--grid`` values (``KEY=v1,v2``) of a command's tokens; the
    values of the options in ``takes_value`` (``--epoch-seconds cifar100=20``) are neither."""
    grids = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "--grid"]
    grids += [t.split("=", 1)[1] for t in tokens if t.startswith("--grid=")]
    rest = [t for i, t in enumerate(tokens) if not (i and tokens[i - 1] in takes_value | {"--grid"})]
    configs = [t for t in rest if t.endswith((".yaml", ".yml")) and not t.startswith("-")]
    overrides = [t for t in rest if OVERRIDE.match(t) and t.lower() != "key=value"]  # not the synopsis
    return configs, overrides, grids


def _grid_points(grids: list[str]) -> list[list[str]]:
    """The overrides of every point of ``--grid`` options (one empty point without any)."""
    from letkd.sweep.grid import grid_points, parse_grid

    if not grids or any(g.split("=", 1)[0].upper() == g.split("=", 1)[0] for g in grids):
        return [[]]  # none, or the synopsis (KEY=v1,v2,...)
    return [[f"{key}={value}" for key, value in point] for point in grid_points(parse_grid(grids))]


def _check_overrides(configs: list[str], overrides: list[str]) -> list[str]:
    from letkd.config import load_config
    from letkd.methods import get_method

    problems = [p for o in overrides if (p := _override_key_problem(o.split("=", 1)[0]))]
    if problems:
        return problems
    files = [f for c in configs if "<" not in c for f in sorted(Path().glob(c)) if f.is_file()]
    for path in files:
        try:
            cfg = load_config(path, overrides)
            get_method(cfg.method.name).parse_params(cfg.method.params)
        except Exception as exc:  # noqa: BLE001  (reported as a problem of the doc line)
            problems.append(f"{path} with {overrides}: {type(exc).__name__}: {exc}")
    return problems


def check_letkd(argv: list[str], full_parse: bool = True) -> list[str]:
    """Problems of ``letkd ARGV`` (a doc line); ``full_parse=False`` for synopsis lines (``[--out DIR]``)."""
    if not argv or not re.fullmatch(r"[a-z][\w/-]*", argv[0]):
        return []  # `letkd --help`, `letkd …`
    names = argv[0].split("/") if not full_parse else [argv[0]]
    tokens = [t.strip("[]|") for t in argv[1:]]
    tokens = [t for t in tokens if t]
    problems = []
    for name in names:
        sub = subparser(name)
        if sub is None:
            return [f"no letkd sub-command {name!r}"]
        known = set(sub._option_string_actions)
        problems += [f"letkd {name}: no option {t.split('=')[0]}" for t in tokens
                     if t.startswith("--") and t.split("=")[0] not in known]  # fmt: skip
    if full_parse and not problems:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                subparser(names[0]).parse_args(tokens)  # type: ignore[union-attr]
            except SystemExit as exc:
                if exc.code:
                    problems.append(f"letkd {' '.join(argv)}: {err.getvalue().strip().splitlines()[-1]}")
    sub = subparser(names[0])
    takes_value = frozenset(
        o for a in (sub._actions if sub else []) if a.nargs != 0 for o in a.option_strings
    )
    configs, overrides, grids = _configs_and_overrides(tokens, takes_value)
    problems += [p for c in configs for p in check_repo_path(c)]
    if problems:
        return problems
    try:
        points = _grid_points(grids)
    except Exception as exc:  # noqa: BLE001  (reported as a problem of the doc line)
        return [f"--grid {grids}: {exc}"]
    return [p for point in points for p in _check_overrides(configs, overrides + point)]


def check_command(line: str) -> list[str]:
    """Problems of one shell line of a doc (only the kinds of lines the module docstring names)."""
    try:
        words = shlex.split(line)
    except ValueError:
        return []
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]  # environment assignments
    ends = [i for i, w in enumerate(words) if w in ("|", "||", "&&", ";", ">", ">>", "2>", "2>&1")]
    words = words[: ends[0]] if ends else words  # the first command of a pipe or a list
    if words[:1] == ["letkd"]:
        return check_letkd(words[1:])
    if "-m" in words and words[0] in ("python", "torchrun"):
        module, rest = words[words.index("-m") + 1], words[words.index("-m") + 2 :]
        if module == "letkd":
            return check_letkd(rest)
        if module == "benchmarks.run_all":
            return [f"no benchmark {n!r}" for n in rest if not (ROOT / f"benchmarks/bench_{n}.py").is_file()]
        if module.startswith("benchmarks."):
            return check_repo_path(module.replace(".", "/") + ".py")
    if words[:1] == ["make"]:
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        return [f"no Makefile target {t!r}" for t in words[1:] if "=" not in t and t not in targets]
    return []


# ---------------------------------------------------------------------------------------------- names


@functools.cache
def letkd_class_names() -> frozenset[str]:
    """Every class defined in src/letkd (by name), read from the sources."""
    names = set()
    for path in (ROOT / "src" / "letkd").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    return frozenset(names)


def check_name(span: str, classes: frozenset[str], groups: set[str]) -> list[str]:
    """An inline ``letkd.x.y`` must resolve; an inline ``XyzError`` must be a class of letkd or Python."""
    if re.fullmatch(r"[A-Z]\w*Error", span):
        ok = span in classes or isinstance(getattr(builtins, span, None), type)
        return [] if ok else [f"no class {span} in letkd"]
    match = LETKD_NAME.match(span)
    if not match or match.group(0) in groups:
        return []
    parts = match.group(0).split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return [f"{match.group(0)}: {attr!r} does not exist"]
            obj = getattr(obj, attr)
        return []
    return [f"{match.group(0)}: no such module"]
