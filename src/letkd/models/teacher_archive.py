"""A tar archive holding many published teachers (mdistiller's ``cifar_teachers.tar``), installed into the
teacher cache file by file.

A teacher's file is found by its path suffix ``<arch>_vanilla/ckpt_epoch_240.pth``, so ``./`` prefixes and
extra top folders (what ``tar cf x.tar ./cifar_teachers`` or a repacked archive write) are accepted; only
regular files are read (links and devices are refused), and a file is installed only after it loads
strictly into the architecture. The archive carries no checksum, so an archive that fails (no such member,
a member that is not the architecture, would run code, is not a torch file, is damaged) is *moved aside*
to ``<archive>.rejected`` (replacing an earlier rejected copy) — never reused — and, when it was the copy
already in the cache, fetched once more. Every message names the archive file that was read.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from letkd.data.fetch import DownloadError, fetch_file, file_digest, writable

#: at most this many member names are listed when the archive does not hold the teacher asked for
LISTED_MEMBERS = 12
REJECTED_SUFFIX = ".rejected"


class Teacher(Protocol):  # what this module needs of a published teacher
    arch: str
    folder: str
    sha256: str | None


def member_for(names: list[str], folder: str, file_name: str) -> str | None:
    """The member whose path ends with ``folder/file_name`` (``./`` and leading folders ignored)."""
    for name in names:
        parts = [p for p in PurePosixPath(name).parts if p not in (".", "/")]
        if parts[-2:] == [folder, file_name]:
            return name
    return None


def listing(names: list[str]) -> str:
    """The archive's members, shortened for a one-line message."""
    shown = ", ".join(names[:LISTED_MEMBERS]) or "nothing"
    more = f" and {len(names) - LISTED_MEMBERS} more" if len(names) > LISTED_MEMBERS else ""
    return shown + more


def move_aside(archive: Path) -> Path:
    """Move a rejected archive to ``<archive>.rejected`` (replacing an older one); return the new path."""
    target = archive.with_name(archive.name + REJECTED_SUFFIX)
    os.replace(archive, target)
    return target


@dataclass(frozen=True)
class ArchiveSource:
    """A tar archive holding every teacher at ``.../{folder}/<file>``; fetched once, then every known teacher
    in it is installed into the cache and the archive is deleted."""

    url_: str
    filename: str
    file_name: str
    fix: str = "choose a writable folder"

    def url(self, teacher: Teacher) -> str:
        return self.url_

    def fetch(
        self,
        teacher: Teacher,
        dest: Path,
        verify: Callable[[Path, str], None],
        others: list[tuple[Teacher, Path, Callable[[Path, str], None]]] = (),  # type: ignore[assignment]
    ) -> None:
        """Install ``teacher`` at ``dest`` (and each of ``others``: (teacher, where, its check) when it is
        missing) from the archive."""
        path = dest.parent.parent / self.filename
        was_cached = path.is_file()
        archive = fetch_file(self.url_, path, then=None, fix=self.fix, store="the teacher cache")
        try:
            self._install_all(archive, teacher, dest, verify, others)
        except DownloadError as exc:
            with writable(archive.parent, "the teacher cache", self.fix):
                rejected = move_aside(archive)
            if not was_cached:
                raise DownloadError(
                    f"{exc} (moved aside to {rejected})", f"{exc.brief} (from {self.url_})"
                ) from None
            print(
                f"warning: the cached {exc.brief}: moved aside to {rejected}; fetching {self.url_} again",
                file=sys.stderr,
                flush=True,
            )
            try:
                archive = fetch_file(self.url_, path, then=None, fix=self.fix, store="the teacher cache")
                self._install_all(archive, teacher, dest, verify, others)
            except DownloadError as again:
                if path.is_file():
                    with writable(archive.parent, "the teacher cache", self.fix):
                        move_aside(path)
                text = (
                    f"the cached {exc.brief} (moved aside to {rejected}); a fresh copy failed: {again.brief}"
                )
                raise DownloadError(text) from None
        with writable(archive.parent, "the teacher cache", self.fix):
            archive.unlink(missing_ok=True)  # every teacher it holds is in the cache now

    def _install_all(self, archive: Path, teacher: Teacher, dest: Path, verify, others) -> None:
        """Install ``teacher`` (failure: :class:`DownloadError` naming ``archive``) and, while the archive is
        here, each of ``others`` it holds (a bad one is skipped)."""
        try:
            with tarfile.open(archive, "r:*") as tf:
                members = {m.name: m for m in tf.getmembers()}
                names = list(members)
                name = member_for(names, teacher.folder, self.file_name)
                if name is None:
                    wanted = f"{teacher.folder}/{self.file_name}"
                    raise DownloadError(f"archive {archive} holds no {wanted}; it holds: {listing(names)}")
                self._install(tf, members[name], archive, teacher, dest, verify)
                for other, target, check in others:
                    other_name = member_for(names, other.folder, self.file_name)
                    if other_name is not None and not target.is_file():
                        try:
                            self._install(tf, members[other_name], archive, other, target, check)
                        except DownloadError:
                            pass
        except (tarfile.TarError, EOFError) as exc:
            first = (str(exc).splitlines() or [""])[0].rstrip(":")
            raise DownloadError(f"archive {archive} is damaged ({type(exc).__name__}: {first})") from None

    def _install(
        self, tf, info: tarfile.TarInfo, archive: Path, teacher: Teacher, target: Path, verify
    ) -> None:
        shown = f"its member {info.name}"
        source = tf.extractfile(info) if info.isfile() else None
        if source is None:
            kind = "a link" if info.issym() or info.islnk() else "not a regular file"
            raise DownloadError(f"archive {archive}: its member {info.name} is {kind}: refused")
        with writable(target.parent, "the teacher cache", self.fix):
            target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.extract")
        try:
            with writable(target.parent, "the teacher cache", self.fix), source, open(tmp, "wb") as out:
                shutil.copyfileobj(source, out)
            if teacher.sha256 and file_digest(tmp, "sha256") != teacher.sha256:
                raise DownloadError(f"archive {archive}: {info.name} differs from the pinned sha256")
            try:
                verify(tmp, shown)
            except DownloadError as exc:
                raise DownloadError(f"archive {archive}: {exc}") from None
            with writable(target.parent, "the teacher cache", self.fix):
                os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
            if target.parent.is_dir() and not any(target.parent.iterdir()):
                target.parent.rmdir()
