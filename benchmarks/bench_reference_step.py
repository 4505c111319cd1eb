"""letkd's training steps side by side with the letKD authors' code and torchdistill, in one process.

Nothing of theirs ships with letkd: fetch them yourself and say where they are.

- ``LETKD_AUTHORS_CODE``: a checkout of https://github.com/adagorgun/letKD-framework (its ``distillation``
  package is imported from there; it needs ``tensorboardX`` and ``imageio`` besides what letkd installs:
  ``pip install tensorboardX imageio``).
- torchdistill: ``pip install torchdistill`` (or ``LETKD_TORCHDISTILL``: a folder to import it from).

Rows whose code is missing are left out, with the reason printed. Every step runs resnet56 → resnet20 at
batch 64 on the same random CIFAR-100-shaped batch, on the CPU, in this process: same thread count, same
allocator setting (the trainer's ``train.reuse_host_memory`` unless ``LETKD_BENCH_SYSTEM_MALLOC=1``),
timed round-robin (median). Ratios are to letkd's vanilla step. What each row runs:

- ``letkd *``: the letkd methods as ``methods_step`` builds them (vanilla, kd, letkd1, letkd2).
- ``authors letKD-1`` / ``letKD-2``: the authors' step functions ``object_classification_with_quest`` /
  ``object_classification_with_subclass_quest`` on networks built with their architecture factory as their
  ``CIFAR100/resnetv1/RN56_RN20/letKD-{1,2}.py`` configs describe (random weights; the codebook holds the
  same random centres as letkd's rows; the sub-class files their value layer reads are written from random
  arrays of the configured shapes into a temporary folder; their ``.cuda()`` calls on those arrays are
  made no-ops when no GPU is present), one SGD optimiser per network as their configs set.
- ``authors KD``: their framework has no KD training step; this row is their resnet56 / resnet20 and their
  ``DistillKL`` criterion (T = 4) in the step their classification step takes (teacher under no_grad,
  CE + KD, backward, SGD).
- ``torchdistill KD``: a ``DistillationBox`` with the KD criterion of torchdistill's CIFAR-100 sample
  config (``KDLoss``, T = 4, α = 0.9), its own resnet56 / resnet20: ``forward_process`` then
  ``post_forward_process`` (backward, SGD step).

Run: ``LETKD_AUTHORS_CODE=/path/to/letKD-framework python -m benchmarks.run_all reference_step``;
``LETKD_BENCH_STEPS`` (default 10) sets the timed rounds.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import letkd
from benchmarks._common import (
    apply_thread_setting,
    env_int,
    format_table,
    interleaved_median,
    trainer_memory_setting,
)
from benchmarks.bench_methods_step import (
    BATCH,
    INPUT_SIZE,
    K_PEN,
    NUM_CLASSES,
    STUDENT,
    SUBCLASSES_PER_CLASS,
    TEACHER,
    TEACHER_DIM,
    build_distiller,
    load_average,
    make_step,
    method_specs,
)
from letkd.models import create_model

Step = Callable[[], None]
_SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}


def git_commit(path: Path) -> str:
    """``@ <short commit>`` of the checkout holding ``path``, or ``""``."""
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" @ {out.stdout.strip()}"


@contextlib.contextmanager
def cuda_calls_stay_on_cpu() -> Iterator[None]:
    """``Tensor.cuda()`` returns the tensor itself while active, when no GPU is present."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def _sgd(*modules: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return torch.optim.SGD(params, **_SGD)


class AuthorsCode:
    """The letKD authors' framework imported from a checkout; builds their letKD-1, letKD-2 and KD steps."""

    def __init__(self, root: Path) -> None:
        if not (root / "distillation" / "architectures").is_dir():
            raise FileNotFoundError(
                f"{root} holds no distillation/architectures (not a letKD-framework checkout)"
            )
        sys.path.insert(0, str(root))
        self.root = root
        # the step modules without their package's __init__, which imports every algorithm of the framework
        # (and with them opencv and scikit-image, used to fit sub-classes, not to train)
        package = "distillation.algorithms.classification"
        if package not in sys.modules:
            importlib.import_module("distillation.algorithms")
            stub = types.ModuleType(package)
            stub.__path__ = [str(root / package.replace(".", "/"))]
            sys.modules[package] = stub
        self.arch = importlib.import_module("distillation.architectures")
        self.tools = importlib.import_module("distillation.architectures.tools")
        self.quest = importlib.import_module(
            "distillation.algorithms.classification.classification_quest_value"
        )
        self.subclass = importlib.import_module(
            "distillation.algorithms.classification.classification_subclass_quest_value"
        )
        self.kd = importlib.import_module("distillation.criterions.KD")
        self.source = f"letKD-framework {root}{git_commit(root)}"

    def _resnet(self, depth: int) -> torch.nn.Module:
        opt = {"depth": depth, "num_filters": [16, 16, 32, 64], "num_classes": NUM_CLASSES}
        return self.arch.factory("feature_extractors.resnet", opt=opt)

    def _split(self, depth: int):
        return self.tools.split_network(self._resnet(depth), ["layer3"], [False])

    def _templates(self, k: int) -> torch.nn.Module:
        opt = {
            "classifier_type": "conv_cosine",
            "num_classes": k,
            "num_channels": TEACHER_DIM,
            "scale_cls": 3.0,
            "learn_scale": True,
        }
        return self.arch.factory("classifiers.classifier", opt=opt)

    def _codebook(self, centers: torch.Tensor) -> torch.nn.Module:
        opt = {
            "num_embeddings": K_PEN,
            "embedding_dim": TEACHER_DIM,
            "commitment_cost": 0.25,
            "decay": 0.99,
            "epsilon": 1e-5,
            "temperature": 1,
        }
        vq = self.arch.factory("miscellaneous.vector_quantization", opt=opt)
        with torch.no_grad():
            vq._embedding.weight.copy_(centers)
        return vq.eval()

    def letkd1_step(self, images, labels, centers) -> Step:
        teacher, _ = self._split(56)
        student, classifier = self._split(20)
        templates = self._templates(K_PEN)
        value = self.arch.factory(
            "miscellaneous.valueLayer", opt={"emb_size": K_PEN, "inp_size": TEACHER_DIM}
        )
        nets = dict(
            feature_extractor=student, classifier=classifier, BoW_predictor=templates, valueLayer=value
        )
        optims = {f"{name}_optimizer": _sgd(net) for name, net in nets.items()}
        vq = self._codebook(centers)
        teacher.eval().requires_grad_(False)

        def step() -> None:
            self.quest.object_classification_with_quest(
                **nets,
                **optims,
                feature_extractor_target=teacher,
                vector_quantizer_target=vq,
                images=images,
                labels=labels,
                is_train=True,
            )

        return step

    def letkd2_step(self, images, labels, centers, folder: Path) -> Step:
        s = NUM_CLASSES * SUBCLASSES_PER_CLASS
        g = np.random.default_rng(0)
        np.save(folder / "centers.npy", g.standard_normal((s, 60)).astype(np.float32))
        np.save(folder / "lda_scalings.npy", g.standard_normal((TEACHER_DIM, 60)).astype(np.float32))
        np.save(folder / "lda_xbar.npy", g.standard_normal(TEACHER_DIM).astype(np.float32))
        scores = g.random((s, s)) ** 8
        np.save(folder / "scores.npy", (scores / scores.sum(1, keepdims=True)).astype(np.float32))
        teacher, _ = self._split(56)
        student, classifier = self._split(20)
        templates = [self._templates(s), self._templates(K_PEN)]
        with cuda_calls_stay_on_cpu():
            values = [
                self.arch.factory(
                    "miscellaneous.valueLayer_subclass",
                    opt={
                        "emb_size": s,
                        "inp_size": TEACHER_DIM,
                        "num_classes": NUM_CLASSES,
                        "centers_filename": str(folder / "centers.npy"),
                        "lda_filename": str(folder / "lda"),
                        "scores_filename": str(folder / "scores.npy"),
                    },
                ),
                self.arch.factory(
                    "miscellaneous.valueLayer", opt={"emb_size": K_PEN, "inp_size": TEACHER_DIM}
                ),
            ]
        opt_student, opt_classifier = _sgd(student), _sgd(classifier)
        opt_templates, opt_values = [_sgd(m) for m in templates], [_sgd(m) for m in values]
        vq = self._codebook(centers)
        teacher.eval().requires_grad_(False)

        def step() -> None:
            self.subclass.object_classification_with_subclass_quest(
                feature_extractor=student,
                feature_extractor_optimizer=opt_student,
                classifier=classifier,
                classifier_optimizer=opt_classifier,
                BoW_predictor=templates,
                BoW_predictor_optimizer=opt_templates,
                feature_extractor_target=teacher,
                vector_quantizer_target=vq,
                valueLayer=values,
                valueLayer_optimizer=opt_values,
                which_stage_t=5,
                which_stage_s=5,
                images=images,
                labels=labels,
                is_train=True,
            )

        return step

    def kd_step(self, images, labels) -> Step:
        teacher, student = self._resnet(56).eval().requires_grad_(False), self._resnet(20).train()
        criterion, optimizer = self.kd.create_criterion({"T": 4}), _sgd(student)

        def step() -> None:
            optimizer.zero_grad()
            with torch.no_grad():
                logits_t = teacher(images)
            logits = student(images)
            loss = F.cross_entropy(logits, labels) + criterion(logits, logits_t)
            loss.backward()
            optimizer.step()

        return step


def torchdistill_kd_step(images, labels) -> tuple[Step, str]:
    """torchdistill's DistillationBox with its CIFAR-100 KD criterion; ``(step, source)``."""
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.models.classification.resnet import resnet20, resnet56

    dataset = torch.utils.data.TensorDataset(images, labels)
    train = {
        "num_epochs": 1,
        "train_data_loader": {
            "dataset_id": "train",
            "kwargs": {"batch_size": BATCH},
            "requires_supp": False,
            "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
        },
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": dict(_SGD)},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                "student_module_path": ".",
                                "student_module_io": "output",
                                "teacher_module_path": ".",
                                "teacher_module_io": "output",
                                "temperature": 4.0,
                                "alpha": 0.9,
                                "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }
    teacher, student = resnet56(num_classes=NUM_CLASSES), resnet20(num_classes=NUM_CLASSES)
    box = get_distillation_box(
        teacher, student, {"train": dataset}, train, torch.device("cpu"), None, False, 1
    )
    box.pre_epoch_process(epoch=0)

    def step() -> None:
        loss = box.forward_process(images, labels, supp_dict={})
        box.post_forward_process(loss=loss)

    import torchdistill

    return step, f"torchdistill {torchdistill.__version__} {Path(torchdistill.__file__).parent}"


def main() -> None:
    """Build every available implementation's steps, time them interleaved, print the table and sources."""
    apply_thread_setting()
    steps = env_int("LETKD_BENCH_STEPS", 10)
    memory = trainer_memory_setting()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, *INPUT_SIZE, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)
    specs = method_specs(generator)
    centers = specs["letkd1"][2][0].centers  # the same random codebook for both implementations
    teacher = create_model(TEACHER, NUM_CLASSES).eval().requires_grad_(False)
    ours = f"letkd {letkd.__version__} {Path(letkd.__file__).parent}"
    calls: dict[str, Step] = {}
    sources: dict[str, str] = {}
    for label in ("vanilla", "kd", "letkd1", "letkd2"):
        calls[f"letkd {label}"] = make_step(build_distiller(*specs[label], teacher), images, labels)
        sources[f"letkd {label}"] = ours
    missing = []
    with tempfile.TemporaryDirectory() as folder:
        root = os.environ.get("LETKD_AUTHORS_CODE", "").strip()
        if not root:
            missing.append("the letKD authors' code: set LETKD_AUTHORS_CODE to a letKD-framework checkout")
        else:
            authors = AuthorsCode(Path(root).expanduser().resolve())
            calls["authors KD"] = authors.kd_step(images, labels)
            calls["authors letKD-1"] = authors.letkd1_step(images, labels, centers)
            calls["authors letKD-2"] = authors.letkd2_step(images, labels, centers, Path(folder))
            sources.update(
                dict.fromkeys(("authors KD", "authors letKD-1", "authors letKD-2"), authors.source)
            )
        extra = os.environ.get("LETKD_TORCHDISTILL", "").strip()
        if extra:
            sys.path.insert(0, str(Path(extra).expanduser().resolve()))
        try:
            calls["torchdistill KD"], sources["torchdistill KD"] = torchdistill_kd_step(images, labels)
        except ImportError as exc:
            missing.append(f"torchdistill ({exc}): pip install torchdistill, or set LETKD_TORCHDISTILL")
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {BATCH} × 3×32×32, "
            f"{TEACHER} → {STUDENT}, median of {steps} interleaved steps, {memory}; {load_average()} before"
        )
        timings = interleaved_median(calls, repeats=steps)
    print(f"{load_average()} after")
    base = timings["letkd vanilla"]
    rows = [
        [
            label,
            f"{t.wall * 1e3:.1f}",
            f"{t.wall / base.wall:.2f}×",
            f"{t.cpu / base.cpu:.2f}×",
            sources[label],
        ]
        for label, t in timings.items()
    ]
    print(format_table(["step", "ms/step", "ratio to letkd vanilla", "CPU-time ratio", "code"], rows))
    for reason in missing:
        print(f"not timed: {reason}")
