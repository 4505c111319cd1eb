"""Fetching files on demand: official dataset archives (CIFAR-10/100, Tiny-ImageNet), checksum-verified.

Every file is downloaded with :func:`torch.hub.download_url_to_file` under a temporary name, verified, and
only then renamed into place; archives are extracted into a temporary folder that is renamed into place once
complete. A partial, truncated or corrupt download is deleted and never used, so a re-run simply starts again.
URLs can be redirected to a mirror with ``$LETKD_DATA_MIRROR`` (a base URL holding the archives under their
official file names); tests replace entries of :data:`ARCHIVES`.
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError

from filelock import FileLock
from tqdm.auto import tqdm

from letkd.data import locate

#: environment variable: base URL of a mirror that holds the archives under their official file names
MIRROR_ENV = "LETKD_DATA_MIRROR"


class DownloadError(RuntimeError):
    """A file could not be downloaded or failed verification; the message says what to fetch and where."""


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

#: what a failed connection raises inside urllib / http.client
NETWORK_ERRORS = (URLError, OSError, http.client.HTTPException, ValueError)


def progress_enabled() -> bool:
    """Progress bars only on terminals (logs redirected to a file get none)."""
    return sys.stderr.isatty()


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


def file_digest(path: Path, algorithm: str) -> str:
    """Hex ``md5`` or ``sha256`` of a file."""
    if algorithm == "md5":
        from torchvision.datasets.utils import calculate_md5

        return calculate_md5(path)
    from letkd.utils import sha256_file

    return sha256_file(path)


def _checksum_problem(path: Path, md5: str | None, sha256: str | None) -> str | None:
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected:
            got = file_digest(path, algorithm)
            if got != expected.lower():
                return f"{algorithm} {got}, expected {expected}"
    return None


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, HTTPError):
        return f"the server answered HTTP {exc.code} {exc.reason}"
    if isinstance(exc, URLError):
        return f"no connection: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def fetch_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    sha256: str | None = None,
    verify: Callable[[Path], None] | None = None,
    then: str = "then run again",
) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already holds a verified copy; return ``dest``.

    The file is downloaded under a unique temporary name next to ``dest``, checked against ``md5`` /
    ``sha256`` (when given) and ``verify(path)`` (which raises :class:`DownloadError` to refuse it), and only
    then renamed to ``dest``. On any failure the temporary file is deleted and :class:`DownloadError` names
    the URL and ``dest`` (the place to put a copy fetched by hand; ``then`` ends that sentence).
    """
    dest = Path(dest)
    if dest.is_file() and _checksum_problem(dest, md5, sha256) is None:
        try:
            if verify is not None:
                verify(dest)
            return dest
        except DownloadError:
            pass  # a bad file in the way: fetch a fresh copy
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.download")
    checksum = f" ({'md5 ' + md5 if md5 else 'sha256 ' + sha256})" if md5 or sha256 else ""
    try:
        from torch.hub import download_url_to_file

        try:
            download_url_to_file(url, str(tmp), progress=progress_enabled())
        except NETWORK_ERRORS as exc:
            raise DownloadError(
                f"cannot download {url} ({_network_reason(exc)}). Without a network: fetch it on a "
                f"connected machine{checksum} and put it at {dest}, {then}."
            ) from None
        problem = _checksum_problem(tmp, md5, sha256)
        if problem is not None:
            raise DownloadError(
                f"the file downloaded from {url} has {problem}: refused and deleted (an interrupted "
                f"transfer, a proxy error page or a changed file); run again to retry, or put a verified "
                f"copy at {dest}."
            )
        if verify is not None:
            verify(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


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
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tqdm(tf.getmembers(), **bar):
                    _extract_tar_member(tf, member, dest)
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
                raise DownloadError(
                    f"{target} already exists but is not usable ({existing}): move it away and run again"
                ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download_dataset(
    name: str, root: str | os.PathLike | None = None, check: Callable[[Path], str | None] | None = None
) -> Path:
    """Fetch and extract dataset ``name`` into :func:`download_base` ``(root)``; return its folder.

    The verified archive is kept next to the folder (a later extraction needs no new download).
    """
    if name not in ARCHIVES:
        raise DownloadError(f"dataset {name!r} is not downloadable; these are: {', '.join(sorted(ARCHIVES))}")
    archive = ARCHIVES[name]
    base = download_base(root)
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / f".{archive.filename}.lock")):  # one process downloads, the others wait
        target = base / archive.folder
        if target.is_dir() and (check is None or check(target) is None):
            return target
        path = fetch_file(
            archive_url(archive),
            base / archive.filename,
            md5=archive.md5,
            then=f"then run again with downloads enabled (or extract it yourself so that "
            f"'{archive.folder}/' lies in {base})",
        )
        return extract_into(path, base, archive.folder, check)


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
