"""Pictures and the page of ``letkd inspect``: argmax maps, template usage, agreement, per-epoch KL.

Files written by :func:`write_inspection` (PNG through matplotlib's Agg canvas, every file atomically):

- ``maps_<layer>.png``: per test image, the image, the student's argmax template map and the teacher's
  target argmax map (maps upsampled to the image size, colours from :func:`label_colors`);
- ``usage_<layer>.png``: how often each template is the argmax, student vs teacher;
- ``agreement.png``: top-1 / top-5 student–teacher agreement per layer;
- ``kl_per_epoch.png``: the ``loss_kd_<layer>`` columns of ``metrics.jsonl``;
- ``maps.npz`` (argmax maps, usage counts, colour tables), ``inspect.json`` (the numbers and where each map
  panel lies in its PNG) and ``index.md`` (the page showing the pictures).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from letkd.engine.rundir import METRICS
from letkd.inspection import Inspection, LayerResult, LoadedRun
from letkd.utils import atomic_write_bytes, atomic_write_text

DPI = 100
PANEL_INCHES = 1.6
MAX_BARS = 64  # above this many templates, usage is drawn as a step curve
KL_PLOT = "kl_per_epoch.png"
AGREEMENT_PLOT = "agreement.png"


def label_colors(k: int) -> np.ndarray:
    """A categorical colour table ``(k, 3)`` in [0, 1]: tab10 / tab20 up to 20 labels, else hues spread by
    the golden ratio with alternating saturation and value (neighbouring indices get distant colours)."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    if k <= 10:
        return np.asarray(colormaps["tab10"].colors[:k], dtype=float)
    if k <= 20:
        return np.asarray(colormaps["tab20"].colors[:k], dtype=float)
    i = np.arange(k)
    hsv = np.stack([(i * 0.6180339887) % 1.0, 0.55 + 0.45 * (i // 5 % 2), 0.6 + 0.4 * (i // 2 % 2)], 1)
    return hsv_to_rgb(hsv)


def colorize(labels: np.ndarray, colors: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``labels (h, w)`` → RGB ``(H, W, 3)`` of ``size = (H, W)`` by nearest-neighbour upsampling."""
    rows = np.arange(size[0]) * labels.shape[0] // size[0]
    cols = np.arange(size[1]) * labels.shape[1] // size[1]
    return colors[labels[np.ix_(rows, cols)]]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def render_maps(result: Inspection, layer: LayerResult) -> tuple[bytes, list[dict[str, Any]]]:
    """PNG of image | student argmax | teacher argmax per pictured image, and the panels' pixel boxes
    ``[x0, y0, x1, y1]`` (from the PNG's top-left corner) with their image index and role."""
    n = len(result.images)
    size = result.images.shape[1:3]
    colors = label_colors(layer.info.num_templates)
    fig = _figure(3 * PANEL_INCHES + 0.9, n * PANEL_INCHES + 0.9)
    top = 1 - 0.65 / fig.get_figheight()
    fig.subplots_adjust(left=0.9 / fig.get_figwidth(), right=0.98, top=top, bottom=0.02, wspace=0.08)
    axes = fig.subplots(n, 3, squeeze=False)
    roles = ("image", "student", "teacher")
    titles = ("image", "student argmax", "teacher target argmax")
    for i in range(n):
        s_map, t_map = layer.student_argmax[i], layer.teacher_argmax[i]
        shown = (result.images[i], colorize(s_map, colors, size), colorize(t_map, colors, size))
        for j, ax in enumerate(axes[i]):
            ax.imshow(shown[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize="small")
        agree = float((s_map == t_map).mean())
        axes[i][0].set_ylabel(f"#{i}  label {result.labels[i]}\nagree {agree:.0%}", fontsize="small")
    title = f"{layer.info.name} ({layer.info.kind}, K={layer.info.num_templates})"
    fig.suptitle(title, y=1 - 0.12 / fig.get_figheight(), fontsize="medium")
    fig.canvas.draw()
    height = fig.bbox.height
    panels = []
    for i in range(n):
        for role, ax in zip(roles, axes[i]):
            box = ax.get_window_extent()
            bbox = [box.x0, height - box.y1, box.x1, height - box.y0]
            panels.append({"image": i, "role": role, "bbox": [round(v, 2) for v in bbox]})
    return _png(fig), panels


def render_usage(layer: LayerResult) -> bytes:
    """PNG of the fraction of locations at which each template is the argmax, student vs teacher."""
    k = layer.info.num_templates
    fig = _figure(7.0, 3.2)
    ax = fig.subplots()
    x = np.arange(k)
    for counts, who, shift in ((layer.usage_teacher, "teacher", -0.2), (layer.usage_student, "student", 0.2)):
        share = counts / max(int(counts.sum()), 1)
        used = int((counts > 0).sum())
        label = f"{who} ({used}/{k} used)"
        if k <= MAX_BARS:
            ax.bar(x + shift, share, width=0.4, label=label)
        else:
            ax.stairs(share, np.arange(k + 1) - 0.5, label=label, fill=who == "teacher", alpha=0.7)
    ax.set_xlabel("template" if layer.info.kind == "codebook" else "sub-class (class × sub-classes + s)")
    ax.set_ylabel("share of locations")
    ax.set_title(
        f"{layer.info.name}: argmax template usage over {layer.locations} locations", fontsize="medium"
    )
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _png(fig)


def render_agreement(layers: Sequence[LayerResult]) -> bytes:
    """PNG of the top-1 / top-5 student–teacher agreement (%) per layer."""
    fig = _figure(1.6 * len(layers) + 2.5, 3.2)
    ax = fig.subplots()
    x = np.arange(len(layers))
    top1 = [100 * r.agreement_top1 for r in layers]
    top5 = [100 * r.agreement_top5 for r in layers]
    ax.bar(x - 0.2, top1, width=0.4, label="top-1 (argmaxes agree)")
    ax.bar(x + 0.2, top5, width=0.4, label="top-5 (teacher's in student's top-5)")
    ax.set_xticks(x, [f"{r.info.name}\nK={r.info.num_templates}" for r in layers])
    ax.set_ylabel("locations (%)")
    ax.set_ylim(0, 100)
    ax.set_title("student–teacher agreement", fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _png(fig)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of ``run_dir/metrics.jsonl`` (empty if there is none)."""
    path = run_dir / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def render_kl(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> bytes | None:
    """PNG of each layer's ``loss_kd_<name>`` (weighted KL, mean over training steps) per epoch; None if
    the rows hold none of them."""
    from matplotlib.ticker import MaxNLocator

    keys = [f"loss_kd_{name}" for name in names]
    if not any(row.get(key) is not None for row in rows for key in keys):
        return None
    fig = _figure(6.0, 3.6)
    ax = fig.subplots()
    for name, key in zip(names, keys):
        points = [(row["epoch"] + 1, row[key]) for row in rows if row.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("KD loss (weight × KL)")
    ax.set_title("per-epoch KL of each KD layer (training)", fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _layer_numbers(r: LayerResult) -> dict[str, Any]:
    return {
        "name": r.info.name,
        "kind": r.info.kind,
        "student_tap": r.info.student_tap,
        "teacher_tap": r.info.teacher_tap,
        "student_path": r.info.student_path,
        "num_templates": r.info.num_templates,
        "grid": list(r.student_argmax.shape[1:]),
        "agreement_top1": r.agreement_top1,
        "agreement_top5": r.agreement_top5,
        "locations": r.locations,
        "templates_used_student": int((r.usage_student > 0).sum()),
        "templates_used_teacher": int((r.usage_teacher > 0).sum()),
    }


def _page(run: LoadedRun, result: Inspection, numbers: dict[str, Any], kl_file: str | None) -> str:
    cfg = run.cfg
    lines = [
        f"# Inside the KD layers of `{run.run_dir}`",
        "",
        f"Checkpoint `{run.checkpoint.name}`: method {cfg.method.name}, student {cfg.model.name}, teacher "
        f"{cfg.teacher.name if cfg.teacher else '-'}, dataset {cfg.data.name}. Maps: the first "
        f"{len(result.images)} test images; usage and agreement: the first {result.stats_images} test "
        "images.",
        "",
        "| layer | kind | student tap | teacher tap | K | grid | agree top-1 | agree top-5 "
        "| templates used (student / teacher) |",
        "|---|---|---|---|---:|---|---:|---:|---|",
    ]
    for n in numbers["layers"]:
        lines.append(
            f"| {n['name']} | {n['kind']} | `{n['student_tap']}` | `{n['teacher_tap']}` "
            f"| {n['num_templates']} | {n['grid'][0]}×{n['grid'][1]} | {100 * n['agreement_top1']:.1f}% "
            f"| {100 * n['agreement_top5']:.1f}% "
            f"| {n['templates_used_student']} / {n['templates_used_teacher']} |"
        )
    lines += ["", f"![agreement]({AGREEMENT_PLOT})", "", "## Per-epoch KL", ""]
    lines.append(f"![per-epoch KL]({kl_file})" if kl_file else "metrics.jsonl holds no KD losses yet.")
    for n in numbers["layers"]:
        lines += [
            "",
            f"## Layer {n['name']}",
            "",
            "Each row: the test image, the student's argmax template per location (pre-BN template scores of "
            "the KD layer) and the argmax of the teacher's target distribution there; equal colours = equal "
            "templates, maps upsampled to the image size.",
            "",
            f"![{n['name']} maps](maps_{n['name']}.png)",
            "",
            f"![{n['name']} usage](usage_{n['name']}.png)",
        ]
    lines += ["", "Numbers: [inspect.json](inspect.json); argmax maps and usage counts: `maps.npz`.", ""]
    return "\n".join(lines)


def write_inspection(run: LoadedRun, result: Inspection, out_dir: str | Path) -> dict[str, Path]:
    """Write the pictures, ``maps.npz``, ``inspect.json`` and ``index.md`` into ``out_dir``; return
    ``{file name: path}``."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    figures: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {"labels": result.labels}
    for r in result.layers:
        maps_png, panels = render_maps(result, r)
        name = f"maps_{r.info.name}.png"
        written[name] = atomic_write_bytes(out / name, maps_png)
        figures[name] = {"layer": r.info.name, "panels": panels}
        name = f"usage_{r.info.name}.png"
        written[name] = atomic_write_bytes(out / name, render_usage(r))
        arrays.update(
            {
                f"{r.info.name}.student_argmax": r.student_argmax,
                f"{r.info.name}.teacher_argmax": r.teacher_argmax,
                f"{r.info.name}.usage_student": r.usage_student,
                f"{r.info.name}.usage_teacher": r.usage_teacher,
                f"{r.info.name}.colors": label_colors(r.info.num_templates),
            }
        )
    written[AGREEMENT_PLOT] = atomic_write_bytes(out / AGREEMENT_PLOT, render_agreement(result.layers))
    kl_png = render_kl(read_metrics(run.run_dir), [r.info.name for r in result.layers])
    if kl_png is not None:
        written[KL_PLOT] = atomic_write_bytes(out / KL_PLOT, kl_png)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    written["maps.npz"] = atomic_write_bytes(out / "maps.npz", buf.getvalue())
    numbers = {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "method": run.cfg.method.name,
        "dataset": run.cfg.data.name,
        "images": len(result.images),
        "stats_images": result.stats_images,
        "labels": result.labels.tolist(),
        "layers": [_layer_numbers(r) for r in result.layers],
        "figures": figures,
    }
    written["inspect.json"] = atomic_write_text(out / "inspect.json", json.dumps(numbers, indent=2) + "\n")
    page = _page(run, result, numbers, KL_PLOT if kl_png is not None else None)
    written["index.md"] = atomic_write_text(out / "index.md", page)
    return written
