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
import shutil
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from letkd.config import ConfigError
from letkd.data.download import DownloadError, fetch_file, file_digest

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


class PublishedTeacherError(ConfigError):
    """A ``crd:`` teacher name is unknown, does not match the config, or its accuracy is off."""


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

    def fetch(self, teacher: PublishedTeacher, dest: Path, verify: Callable[[Path], None]) -> None:
        fetch_file(self.url(teacher), dest, sha256=teacher.sha256, verify=verify)


@dataclass(frozen=True)
class ArchiveSource:
    """A tar archive holding every teacher at ``member`` (``{folder}`` filled in); fetched once, then every
    known teacher in it is installed into the cache and the archive is deleted."""

    url_: str
    filename: str
    member: str

    def url(self, teacher: PublishedTeacher) -> str:
        return self.url_

    def fetch(self, teacher: PublishedTeacher, dest: Path, verify: Callable[[Path], None]) -> None:
        cache = dest.parent.parent
        archive = fetch_file(self.url_, cache / self.filename)
        try:
            with tarfile.open(archive, "r:*") as tf:
                self._install(tf, teacher, dest, verify)
                for other in TEACHERS.values():
                    target = cache / other.folder / FILE_NAME
                    if other is not teacher and not target.is_file():
                        try:  # the others too, while the archive is here; a bad one is simply skipped
                            self._install(tf, other, target, _verifier(other))
                        except DownloadError:
                            pass
        except (tarfile.TarError, EOFError, OSError) as exc:
            archive.unlink(missing_ok=True)
            raise DownloadError(
                f"{archive} (from {self.url_}) is damaged ({type(exc).__name__}: {exc}): deleted; run again"
            ) from None
        if not dest.is_file():
            raise DownloadError(f"{self.url_} holds no {self.member.format(folder=teacher.folder)}")
        archive.unlink(missing_ok=True)  # every teacher it holds is in the cache now

    def _install(self, tf: tarfile.TarFile, teacher: PublishedTeacher, target: Path, verify) -> None:
        name = self.member.format(folder=teacher.folder)
        try:
            info = tf.getmember(name)
        except KeyError:
            return
        source = tf.extractfile(info) if info.isfile() else None
        if source is None:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.extract")
        try:
            with source, open(tmp, "wb") as out:
                shutil.copyfileobj(source, out)
            if teacher.sha256 and file_digest(tmp, "sha256") != teacher.sha256:
                raise DownloadError(f"{name} in {self.url_}: sha256 differs from the pinned {teacher.sha256}")
            verify(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


#: where published teachers are fetched from, in order (after ``$LETKD_TEACHER_MIRROR`` when set)
SOURCES: list[FileSource | ArchiveSource] = [
    ArchiveSource(
        "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar",
        "cifar_teachers.tar",
        "cifar_teachers/{folder}/" + FILE_NAME,
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


def _verifier(teacher: PublishedTeacher) -> Callable[[Path], None]:
    """A check that a file loads strictly (every key and shape) into the teacher's zoo architecture."""

    def verify(path: Path) -> None:
        from letkd.models import CheckpointError, create_model, load_weights

        try:
            load_weights(create_model(teacher.arch, teacher.num_classes), path, strict=True)
        except CheckpointError as exc:
            raise DownloadError(f"the file for {teacher.name} is no usable {teacher.arch}: {exc}") from None

    return verify


def resolve_teacher_checkpoint(
    spec: str, cache_dir: str | os.PathLike | None = None, download: bool = True, arch: str | None = None
) -> Path:
    """The local checkpoint of published teacher ``spec`` (``crd:resnet56``), fetched into the cache first
    if needed.

    ``arch`` (the config's ``teacher.name``) must be the teacher's architecture. A fetched file is installed
    only after it loads strictly; a file already in the cache (e.g. one put there by hand) is used as is.
    Offline, :class:`DownloadError` lists every URL tried and the path to put the file at.
    """
    teacher = published_teacher(spec)
    if arch is not None and arch != teacher.arch:
        raise PublishedTeacherError(
            f"teacher.checkpoint {spec!r} is a {teacher.arch}, but teacher.name is {arch!r}: "
            f"set teacher.name={teacher.arch} or choose the {PREFIX}{arch} teacher"
        )
    dest = teacher_cache_dir(cache_dir) / teacher.folder / FILE_NAME
    if dest.is_file():
        return dest
    urls = [source.url(teacher) for source in sources()]
    if not download:
        raise PublishedTeacherError(
            f"published teacher {spec} is not in the cache: put {teacher.folder}/{FILE_NAME} (from "
            f"{' or '.join(urls)}) at {dest}"
        )
    failures = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent.parent / ".fetch.lock")):  # one process downloads, the others wait
        for source in sources():
            if dest.is_file():
                return dest
            try:
                source.fetch(teacher, dest, _verifier(teacher))
                return dest
            except DownloadError as exc:
                failures.append(f"  - {exc}")
    raise DownloadError(
        f"cannot fetch published teacher {spec}; tried:\n"
        + "\n".join(failures)
        + f"\nWithout a network: get {teacher.folder}/{FILE_NAME} from one of {', '.join(urls)} "
        f"and put it at {dest} (or set ${CACHE_ENV} to a folder holding {teacher.folder}/{FILE_NAME})."
    )


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
    "check_published_accuracy",
    "is_published_name",
    "published_teacher",
    "resolve_teacher_checkpoint",
    "teacher_cache_dir",
]
