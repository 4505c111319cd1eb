"""Downloads that never hang and leave nothing behind: a stalled server times out (with retries and a
warning each), a lock held by a silent process is not waited on forever, a killed download's temporary
files are removed by the next one, SIGTERM and Ctrl-C clean up, and a read-only folder is reported as one
(with what to do), never as a network failure."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from letkd.cli import main
from letkd.data import http
from letkd.data.fetch import DownloadError, FolderNotWritableError, fetch_file
from letkd.locks import EntryLock, LockStalledError
from local_http import serve, stalled
from read_only import read_only


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setenv(http.TIMEOUT_ENV, "0.4")
    monkeypatch.setenv(http.RETRIES_ENV, "1")
    monkeypatch.setattr(http, "BACKOFF_SECONDS", 0.05)


def _everything(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def test_a_stalled_server_times_out_with_a_retry_and_leaves_nothing(tmp_path, capsys):
    with stalled() as base:
        t0 = time.monotonic()
        with pytest.raises(DownloadError) as err:
            fetch_file(f"{base}/x/file.bin", tmp_path / "cache" / "file.bin")
        seconds = time.monotonic() - t0
    assert "no answer for 0.4 s" in str(err.value) and "(2 attempts)" in str(err.value)
    assert f"{base}/x/file.bin" in str(err.value) and str(tmp_path / "cache" / "file.bin") in str(err.value)
    assert seconds < 10
    assert capsys.readouterr().err.count("warning: ") == 1  # one retry, announced
    assert _everything(tmp_path) == []  # no .partial, no lock, no empty cache folder


def test_settings_out_of_range_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(http.TIMEOUT_ENV, "0")
    with pytest.raises(http.DownloadSettingError, match="LETKD_DOWNLOAD_TIMEOUT"):
        fetch_file("http://127.0.0.1:9/x", tmp_path / "x")


def test_a_killed_downloads_temporary_files_are_removed_by_the_next_one(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    left = [".file.bin.1a2b3c.partial", ".file.bin.0123.download.4567.partial", ".file.bin.9f.extract"]
    for name in [*left, ".file.bin.lock"]:  # what kill -9 leaves: temporaries and the (released) lock
        (cache / name).write_bytes(b"half")
    (cache / ".other.bin.1a.partial").write_bytes(b"not ours")
    with serve() as server:
        server.files["/file.bin"] = b"payload"
        fetch_file(server.url("/file.bin"), cache / "file.bin")
    assert _everything(cache) == [".other.bin.1a.partial", "file.bin"]


def test_a_lock_held_by_a_silent_process_is_not_waited_on_forever(tmp_path):
    path = tmp_path / ".x.lock"
    holder = EntryLock(path, "x", "downloading", patience=60).acquire()
    try:
        t0 = time.monotonic()
        with pytest.raises(LockStalledError, match=rf"pid {os.getpid()}\) has been downloading x.*kill"):
            EntryLock(path, "x", "downloading", patience=0.5).acquire()
        assert time.monotonic() - t0 < 10
    finally:
        holder.release()


def test_a_lock_whose_holder_makes_progress_is_waited_for(tmp_path, monkeypatch):
    from letkd import locks

    monkeypatch.setattr(locks, "BEAT_INTERVAL", 0.0)
    path = tmp_path / ".x.lock"
    holder = EntryLock(path, "x", "downloading", patience=60).acquire()

    def work() -> None:  # 1.5 s of work with heartbeats, then done
        for _ in range(15):
            time.sleep(0.1)
            locks.beat()
        holder.release()

    thread = threading.Thread(target=work)
    thread.start()
    waiter = EntryLock(path, "x", "downloading", patience=0.6).acquire()
    waiter.release()
    thread.join()
    assert not path.exists()


@pytest.mark.parametrize(
    "signum, code, word",
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
    ids=["DL3-SIGTERM", "DL2-SIGINT"],
)
def test_sigterm_and_ctrl_c_during_a_download_clean_up(signum, code, word, tmp_path, monkeypatch, capsys):
    real = http._one_attempt

    def interrupted(url, out, timeout, progress):
        out.write_bytes(b"the first bytes")
        os.kill(os.getpid(), signum)  # arrives while the transfer runs
        time.sleep(1)
        return real(url, out, timeout, progress)

    monkeypatch.setattr(http, "_one_attempt", interrupted)
    monkeypatch.setenv("LETKD_TEACHERS", str(tmp_path / "teachers"))
    monkeypatch.setenv("LETKD_TEACHER_MIRROR", "http://127.0.0.1:9/mirror")
    capsys.readouterr()
    rc = main(["eval", "--checkpoint", "crd:resnet56", "--data", "digits", "--num-classes", "100"])
    assert rc == code
    assert capsys.readouterr().err.strip().startswith(f"{word}: run the same command again")
    assert _everything(tmp_path) == []  # the partial file, the locks and the folders made are gone


def test_a_read_only_teacher_cache_is_named_with_what_to_do(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "teachers"
    cache.mkdir()
    monkeypatch.setenv("LETKD_TEACHERS", str(cache))
    with serve() as server, read_only(cache):
        monkeypatch.setenv("LETKD_TEACHER_MIRROR", server.url("/m"))
        rc = main(["eval", "--checkpoint", "crd:resnet56", "--data", "digits", "--num-classes", "100"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("error:") == 1 and "Traceback" not in err
    assert (
        f"cannot write the teacher cache {cache}" in err and "set $LETKD_TEACHERS to a writable folder" in err
    )
    assert "download" not in err and server.requests == {}  # a local problem: nothing was fetched


def test_a_read_only_data_folder_is_named_with_what_to_do(tmp_path, capsys):
    with serve() as server:
        data = tmp_path / "data"
        data.mkdir()
        with pytest.MonkeyPatch.context() as patch, read_only(data):
            patch.setenv("LETKD_DATA_MIRROR", server.url("/d"))
            with pytest.raises(FolderNotWritableError) as err:
                from letkd.data.download import download_dataset

                download_dataset("cifar100", data)
    assert f"cannot write the data folder {data}" in str(err.value)
    assert "pass a writable data.root (--root), or set $LETKD_DATA" in str(err.value)
    assert server.requests == {}
