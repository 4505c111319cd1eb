"""Published CIFAR-100 teachers by name: ``crd:resnet56`` → a verified checkpoint file in a local cache.

These are the "vanilla" teachers released with CRD / RepDistiller (``<arch>_vanilla/ckpt_epoch_240.pth``, a
torch dict ``{"model": state_dict, "epoch", "accuracy", "optimizer"}``) that most distillation papers, the
letKD paper included, distil from. They are published in two places:

- the mdistiller GitHub release archive ``cifar_teachers.tar`` (``cifar_teachers/<arch>_vanilla/...``),
  reachable today, tried first;
- RepDistiller's own server ``http://shape2prog.csail.mit.edu/repo/<arch>_vanilla/ckpt_epoch_240.pth``
  (its ``scripts/fetch_pretrained_teachers.sh``), reported unreachable since 2022, tried second.

Neither publishes checksums, so a fetched file is verified by a strict load into the architecture here,
and the run pipeline checks the teacher's measured CIFAR-100 test accuracy against the published figure
(:func:`check_published_accuracy`). ``$LETKD_TEACHER_MIRROR`` (a base URL holding ``<arch>_vanilla/
ckpt_epoch_240.pth``) is tried before both; tests replace :data:`SOURCES`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from letkd.config import ConfigError
from letkd.data.fetch import DownloadError, fetch_file, patience, remove_empty, writable
from letkd.errors import ListedError
from letkd.locks import EntryLock
from letkd.models.teacher_archive import ArchiveSource

PREFIX = "crd:"
#: environment variable: the teacher cache folder (default ``$TORCH_HOME/hub/checkpoints/letkd``)
CACHE_ENV = "LETKD_TEACHERS"
#: environment variable: base URL of a mirror in RepDistiller's layout, tried before the published sources
MIRROR_ENV = "LETKD_TEACHER_MIRROR"
FILE_NAME = "ckpt_epoch_240.pth"
#: refuse a teacher whose measured top-1 differs from the published one by more than this (points)
ACCURACY_TOLERANCE = 0.2
#: the accuracy check needs the whole CIFAR-100 test set
TEST_IMAGES = 10_000


#: what to do when the teacher cache cannot be written
CACHE_FIX = f"set ${CACHE_ENV} to a writable folder (or $TORCH_HOME, whose hub/checkpoints/letkd it is)"


class PublishedTeacherError(ConfigError):
    """A ``crd:`` teacher name is unknown, does not match the config, or its accuracy is off."""


class TeacherFetchError(ListedError, DownloadError):
    """No source could provide a published teacher: one item per source, then what to do offline."""


@dataclass(frozen=True)
class PublishedTeacher:
    """One published teacher: zoo architecture, folder in the releases, published CIFAR-100 top-1 (%)."""

    arch: str
    top1: float
    num_classes: int = 100
    dataset: str = "cifar100"
    sha256: str | None = None  # none is published today; set one to pin a file

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.arch}"

    @property
    def folder(self) -> str:
        return f"{self.arch}_vanilla"


#: the published top-1 of each file (CRD paper, Table 1 of the letKD paper: its "Teacher" row)
TEACHERS: dict[str, PublishedTeacher] = {
    t.arch: t
    for t in (
        PublishedTeacher("wrn_40_2", 75.61),
        PublishedTeacher("resnet56", 72.34),
        PublishedTeacher("resnet110", 74.31),
        PublishedTeacher("resnet32x4", 79.42),
        PublishedTeacher("vgg13", 74.64),
        PublishedTeacher("ResNet50", 79.34),
    )
}


@dataclass(frozen=True)
class FileSource:
    """One file per teacher: ``template`` with ``{folder}`` (e.g. ``resnet56_vanilla``) filled in."""

    template: str

    def url(self, teacher: PublishedTeacher) -> str:
        return self.template.format(folder=teacher.folder, file=FILE_NAME)

    def fetch(self, teacher: PublishedTeacher, dest: Path, verify, others=()) -> None:
        fetch_file(self.url(teacher), dest, sha256=teacher.sha256, verify=lambda p: verify(p, "the file"),
                   then=None, fix=CACHE_FIX, store="the teacher cache")  # fmt: skip


#: where published teachers are fetched from, in order (after ``$LETKD_TEACHER_MIRROR`` when set)
SOURCES: list[FileSource | ArchiveSource] = [
    ArchiveSource(
        "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar",
        "cifar_teachers.tar",
        FILE_NAME,
        CACHE_FIX,
    ),
    FileSource("http://shape2prog.csail.mit.edu/repo/{folder}/" + FILE_NAME),
]


def sources() -> list[FileSource | ArchiveSource]:
    """:data:`SOURCES`, preceded by ``$LETKD_TEACHER_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_ENV)
    extra = [FileSource(mirror.rstrip("/") + "/{folder}/" + FILE_NAME)] if mirror else []
    return extra + list(SOURCES)


def is_published_name(spec: str | None) -> bool:
    """Whether a ``teacher.checkpoint`` value names a published teacher (``crd:<arch>``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def published_teacher(spec: str) -> PublishedTeacher:
    """The table entry of ``crd:<arch>``; an unknown name raises :class:`PublishedTeacherError`."""
    arch = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    if arch not in TEACHERS:
        known = ", ".join(t.name for t in TEACHERS.values())
        raise PublishedTeacherError(f"unknown published teacher {spec!r}; known: {known}")
    return TEACHERS[arch]


def teacher_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$LETKD_TEACHERS``, else ``$TORCH_HOME/hub/checkpoints/letkd`` (torch.hub's)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / "letkd"


def _verifier(teacher: PublishedTeacher) -> Callable[[Path, str], None]:
    """A check that a file loads strictly (every key and shape) into the teacher's zoo architecture;
    ``verify(path, shown)`` names the file as ``shown`` (a temporary file's name means nothing to a user)."""

    def verify(path: Path, shown: str) -> None:
        from letkd.models import CheckpointError, create_model, load_weights

        try:
            with warnings.catch_warnings():  # torch's pickle-protocol notes: the error below says it all
                warnings.simplefilter("ignore", UserWarning)
                load_weights(create_model(teacher.arch, teacher.num_classes), path, strict=True)
        except CheckpointError as exc:
            raise DownloadError(
                f"{shown} is no usable {teacher.arch}: {_first_sentence(exc, path)}"
            ) from None

    return verify


def _first_sentence(exc: Exception, path: Path, limit: int = 300) -> str:
    """The gist of a loading error, without the file's name (said already) and torch's advice."""
    text = " ".join(str(exc).replace(f"checkpoint {path} ", "").replace(str(path), "the file").split())
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_teacher_name(spec: str, arch: str | None) -> PublishedTeacher:
    """The teacher of ``spec``; refuses an ``arch`` (``teacher.name`` / ``--model``) that is not its own."""
    teacher = published_teacher(spec)
    if arch is not None and arch != teacher.arch:
        known = ", ".join(t.name for t in TEACHERS.values())
        other = f"choose the {PREFIX}{arch} teacher" if arch in TEACHERS else f"pick one of {known}"
        raise PublishedTeacherError(
            f"teacher.checkpoint {spec!r} is a {teacher.arch}, but teacher.name is {arch!r}: "
            f"set teacher.name={teacher.arch} or {other}"
        )
    return teacher


def check_eval_dataset(spec: str, data: str, data_classes: int, num_classes: int | None) -> None:
    """Refuse to evaluate published teacher ``spec`` on a dataset whose class count differs from its own,
    unless ``num_classes`` (``--num-classes``) says its own count explicitly — before anything is fetched."""
    teacher = published_teacher(spec)
    if num_classes is not None and num_classes != teacher.num_classes:
        raise PublishedTeacherError(
            f"{spec} is a {teacher.num_classes}-class {teacher.dataset} teacher; --num-classes {num_classes} "
            f"does not fit it (omit --num-classes)"
        )
    if num_classes is None and data_classes != teacher.num_classes:
        raise PublishedTeacherError(
            f"{spec} is a {teacher.num_classes}-class {teacher.dataset} teacher but --data {data} has "
            f"{data_classes} classes: evaluate it with --data {teacher.dataset}, or pass --num-classes "
            f"{teacher.num_classes} to run it on {data} anyway"
        )


def resolve_teacher_checkpoint(
    spec: str, cache_dir: str | os.PathLike | None = None, download: bool = True, arch: str | None = None
) -> Path:
    """The local checkpoint of published teacher ``spec`` (``crd:resnet56``), fetched into the cache first
    if needed.

    ``arch`` (the config's ``teacher.name``) must be the teacher's architecture. A fetched file is installed
    only after it loads strictly; a file already in the cache is checked the same way, and a damaged one
    (e.g. cut short) is deleted and fetched again. Offline, :class:`TeacherFetchError` lists every URL tried
    and says once where to put the file; a cache that cannot be written raises
    :class:`~letkd.data.fetch.FolderNotWritableError`.
    """
    teacher = check_teacher_name(spec, arch)
    cache = teacher_cache_dir(cache_dir)
    dest = cache / teacher.folder / FILE_NAME
    verify = _verifier(teacher)
    deleted = _drop_if_damaged(dest, verify, download)
    if dest.is_file():
        return dest
    urls = [source.url(teacher) for source in sources()]
    where = f"put {teacher.folder}/{FILE_NAME} (from {' or '.join(urls)}) at {dest}"
    if not download:
        raise PublishedTeacherError(f"published teacher {spec} is not in the cache: {where}")
    failures = _fetch_from_sources(teacher, cache, dest, verify)
    if dest.is_file():
        return dest
    raise TeacherFetchError(
        f"cannot fetch published teacher {spec}{deleted} from any source:",
        failures,
        f"Without a network: get {teacher.folder}/{FILE_NAME} from one of those URLs on a connected machine "
        f"and put it at {dest} (or set ${CACHE_ENV} to a folder holding {teacher.folder}/{FILE_NAME}).",
    )


def _drop_if_damaged(dest: Path, verify: Callable[[Path, str], None], download: bool) -> str:
    """Delete a cached teacher file that does not load strictly (one warning line); return a note for the
    error message when it was deleted ('' when the file is fine or absent)."""
    if not dest.is_file():
        return ""
    try:
        verify(dest, str(dest))
        return ""
    except DownloadError as exc:
        problem = str(exc)
    if not download:
        raise PublishedTeacherError(
            f"{problem}; delete it and run again with downloads allowed to fetch it anew"
        )
    with writable(dest.parent, "the teacher cache", CACHE_FIX):
        dest.unlink()
    print(f"warning: {problem}: deleted, fetching it again", file=sys.stderr, flush=True)
    return f" (the damaged copy in the cache was deleted: {dest})"


def _fetch_from_sources(teacher: PublishedTeacher, cache: Path, dest: Path, verify) -> list[str]:
    """Try each source in turn under the cache's lock; return why each one failed (nothing when one
    worked). Folders made for the teacher are removed again when nothing was installed."""
    created = next((p for p in [cache, *cache.parents] if p.exists()), None)
    failures: list[str] = []
    lock = EntryLock(cache / ".fetch.lock", teacher.folder, "fetching", patience())
    try:
        with writable(cache, "the teacher cache", CACHE_FIX):
            cache.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        try:
            others = [
                (t, cache / t.folder / FILE_NAME, _verifier(t)) for t in TEACHERS.values() if t is not teacher
            ]
            for source in sources():
                if dest.is_file():
                    break
                try:
                    source.fetch(teacher, dest, verify, others)
                    break
                except DownloadError as exc:
                    failures.append(exc.brief)
        finally:
            lock.release()
    finally:
        if not dest.exists():
            remove_empty(dest.parent, cache)
            if created is not None and cache.is_dir() and not any(cache.iterdir()):
                remove_empty(cache, created)
    return failures


def check_published_accuracy(spec: str | None, top1: float, num_images: int | None = None) -> bool:
    """Refuse a published teacher whose measured test top-1 is more than 0.2 points off the published one.

    Returns False (nothing compared) when ``spec`` is not a ``crd:`` name or the accuracy was measured on
    other than the whole test set (``num_images`` != 10,000), True when it matches; raises
    :class:`PublishedTeacherError` when it does not.
    """
    if not is_published_name(spec):
        return False
    teacher = published_teacher(spec)
    if num_images is not None and num_images != TEST_IMAGES:
        return False
    gap = float(top1) - teacher.top1
    if round(abs(gap), 6) > ACCURACY_TOLERANCE:  # measured top-1 is a multiple of 0.01 points
        raise PublishedTeacherError(
            f"published teacher {spec}: measured {teacher.dataset} test top-1 {top1:.2f}% but the "
            f"published figure is {teacher.top1:.2f}% ({gap:+.2f} points, more than {ACCURACY_TOLERANCE} "
            f"off). The file ({teacher_cache_dir() / teacher.folder / FILE_NAME}) or the test data differ "
            f"from the published ones: delete the file to fetch it again and check data.root "
            f"(teacher.check_accuracy=false skips this check)."
        )
    return True


__all__ = [
    "ACCURACY_TOLERANCE",
    "TEACHERS",
    "PublishedTeacher",
    "PublishedTeacherError",
    "check_eval_dataset",
    "check_published_accuracy",
    "is_published_name",
    "published_teacher",
    "resolve_teacher_checkpoint",
    "teacher_cache_dir",
]
