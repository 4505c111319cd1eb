"""Datasets fetched on demand: the official archives of CIFAR-10/100 and Tiny-ImageNet, md5-verified.

Each archive is fetched by :func:`letkd.data.fetch.fetch_file` (timeouts, retries, verified before it is
renamed into place) and extracted into a temporary folder that is renamed into place once complete, so a
dataset folder appears complete or not at all. URLs can be redirected to a mirror with
``$LETKD_DATA_MIRROR`` (a base URL holding the archives under their official file names); tests replace
entries of :data:`ARCHIVES`.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from letkd.data import locate
from letkd.data.fetch import (
    DownloadError,
    fetch_file,
    patience,
    progress_enabled,
    remove_empty,
    writable,
)
from letkd.locks import EntryLock, beat

#: environment variable: base URL of a mirror that holds the archives under their official file names
MIRROR_ENV = "LETKD_DATA_MIRROR"


@dataclass(frozen=True)
class Archive:
    """One official dataset archive: where it is published, its checksum and the folder it unpacks to."""

    url: str
    filename: str
    md5: str
    folder: str


#: dataset name -> official archive (the URLs and MD5 sums torchvision and the dataset pages publish)
ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
    ),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
    ),
    "tiny_imagenet": Archive(
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        "tiny-imagenet-200.zip",
        "90528d7ca1a48142e341f4ef8d21d0de",
        "tiny-imagenet-200",
    ),
}

#: what the data folder's errors say to do about a folder that cannot be written
DATA_FOLDER_FIX = "pass a writable data.root (--root), or set $LETKD_DATA to a writable folder"


def archive_url(archive: Archive) -> str:
    """The archive's URL, or its file under ``$LETKD_DATA_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url


def download_base(root: str | os.PathLike | None) -> Path:
    """Where downloaded datasets go: ``root`` if given, else ``$LETKD_DATA``, else ``~/.cache/letkd``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(locate.DATA_ENV)
    return Path(env).expanduser() if env else locate.CACHE_DIR


def _extract_tar_member(tf: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        tf.extract(member, dest, filter="data")
        return
    parts = Path(member.name).parts
    if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
        raise tarfile.TarError(f"refusing archive member {member.name!r} (absolute, '..', link or device)")
    tf.extract(member, dest)


def unpack(archive: Path, dest: Path) -> None:
    """Extract a ``.zip`` / ``.tar[.gz]`` archive into ``dest`` (paths escaping ``dest`` are refused)."""
    bar = dict(desc=f"extracting {archive.name}", unit="file", disable=not progress_enabled())
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in tqdm(zf.infolist(), **bar):
                    zf.extract(info, dest)  # zipfile drops absolute paths and '..' components
                    beat()
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tqdm(tf.getmembers(), **bar):
                    _extract_tar_member(tf, member, dest)
                    beat()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DownloadError(f"{archive}: cannot extract the archive ({type(exc).__name__}: {exc})") from None


def extract_into(
    archive: Path, base: Path, folder: str, check: Callable[[Path], str | None] | None = None
) -> Path:
    """Unpack ``archive`` (which holds ``folder/``) so that ``base/folder`` appears complete or not at all.

    Extraction goes to a temporary folder inside ``base``; ``check(folder)`` (None = complete, else what is
    missing) is applied before the rename into place. If another process put a complete ``base/folder``
    there first, that one is kept.
    """
    target = base / folder
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".extract", dir=base))
    try:
        unpack(archive, staging)
        produced = staging / folder
        if not produced.is_dir():
            raise DownloadError(f"{archive}: the archive holds no '{folder}/' folder")
        problem = check(produced) if check is not None else None
        if problem is not None:
            raise DownloadError(f"{archive}: the extracted '{folder}/' is incomplete ({problem})")
        try:
            os.rename(produced, target)
        except OSError:
            existing = check(target) if check is not None and target.is_dir() else "not replaceable"
            if existing is not None:
                raise DownloadError(_in_the_way(target, existing)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _in_the_way(target: Path, problem: str) -> str:
    return (
        f"{target} is in the way: an incomplete '{target.name}/' ({problem}) that letkd does not overwrite; "
        "move it away (or complete it) and run again"
    )


def download_dataset(
    name: str, root: str | os.PathLike | None = None, check: Callable[[Path], str | None] | None = None
) -> Path:
    """Fetch and extract dataset ``name`` into :func:`download_base` ``(root)``; return its folder.

    The verified archive is kept next to the folder (a later extraction needs no new download). An
    incomplete folder of the same name in the way is reported before anything is downloaded; a data folder
    created here is removed again when the download fails.
    """
    if name not in ARCHIVES:
        raise DownloadError(f"dataset {name!r} is not downloadable; these are: {', '.join(sorted(ARCHIVES))}")
    archive = ARCHIVES[name]
    base = download_base(root)
    created = next((p for p in [base, *base.parents] if p.exists()), None)
    target = base / archive.folder
    lock = EntryLock(base / f".{archive.folder}.lock", f"{name} into {base}", "downloading", patience())
    try:
        with writable(base, "the data folder", DATA_FOLDER_FIX):
            base.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        try:
            if target.is_dir():
                problem = check(target) if check is not None else None
                if problem is None:
                    return target
                raise DownloadError(_in_the_way(target, problem) + " (nothing was downloaded)")
            for stale in base.glob(f".{archive.folder}.*.extract"):  # a killed extraction's folder
                shutil.rmtree(stale, ignore_errors=True)
            path = fetch_file(
                archive_url(archive),
                base / archive.filename,
                md5=archive.md5,
                then=f"then run again with downloads enabled (or extract it yourself so that "
                f"'{archive.folder}/' lies in {base})",
                fix=DATA_FOLDER_FIX,
                store="the data folder",
            )
            with writable(base, "the data folder", DATA_FOLDER_FIX):
                return extract_into(path, base, archive.folder, check)
        finally:
            lock.release()
    finally:
        if created is not None and not any(base.iterdir() if base.is_dir() else []):
            remove_empty(base, created)


def how_to_download(name: str) -> str:
    """One sentence for 'dataset not found' errors: the URL, and how to let letkd fetch it."""
    archive = ARCHIVES[name]
    return (
        f"To get it: pass download=True (config: data.download=true, command line: --download) to fetch "
        f"{archive_url(archive)} (md5 {archive.md5}), or download that file yourself and extract it so that "
        f"'{archive.folder}/' lies in $LETKD_DATA (or ./data, or the root you pass)."
    )


def ensure_dataset(name: str, root: str | os.PathLike | None = None) -> None:
    """Make dataset ``name`` available before a run starts: found where it is looked for, or downloaded
    (CIFAR-10/100, Tiny-ImageNet); anything else missing raises :class:`DatasetNotFoundError`."""
    from letkd.data.registry import create_dataset

    create_dataset(name, "test", root=root, transform=None, download=True)
