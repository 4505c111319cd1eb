"""The cache-entry lock and the clean-up of leftovers: exclusion, the waiting message, stale files."""

from __future__ import annotations

import os
import threading
import time

import pytest

from letkd.supervision.lock import EntryLock
from letkd.supervision.repair import move_aside, read_cached_record, remove_stale_temps


def test_a_second_holder_waits_until_the_first_releases(tmp_path):
    path = tmp_path / "codebook-abc.lock"
    order = []
    first = EntryLock(path, "codebook artefact codebook-abc.safetensors").acquire()
    assert path.read_text().strip() == str(os.getpid())

    def second() -> None:
        with EntryLock(path, "codebook artefact codebook-abc.safetensors"):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    assert order == [], "the second holder must wait for the first"
    order.append("first released")
    first.release()
    thread.join(10)
    assert order == ["first released", "second"]
    assert not path.exists(), "the lock file is removed on release"


def test_the_waiting_message_names_the_entry_and_the_holder(tmp_path, capfd):
    path = tmp_path / "rows.lock"
    what = "feature rows of 'penultimate'"
    held = EntryLock(path, what).acquire()
    thread = threading.Thread(target=lambda: EntryLock(path, what).acquire().release())
    thread.start()
    time.sleep(0.5)
    held.release()
    thread.join(10)
    err = capfd.readouterr().err
    assert f"waiting for another process fitting {what} (pid {os.getpid()}); lock file {path}" in err
    assert err.count("\n") == 1


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    path = tmp_path / "codebook-abc.lock"
    path.write_text("999999\n")  # the file of a process killed with the lock: its flock died with it
    with EntryLock(path, "x") as lock:
        assert lock.acquired_at is not None and path.read_text().strip() == str(os.getpid())
    assert not path.exists()


def test_only_temps_older_than_the_lock_are_removed(tmp_path):
    old, young, other = (tmp_path / n for n in (".e.1.tmp", ".e.2.tmp", ".f.1.tmp"))
    old.mkdir()
    (old / "rows.f32").write_bytes(b"x")
    young.write_bytes(b"y")
    other.write_bytes(b"z")
    past = time.time() - 60
    for p in (old, other):
        os.utime(p, (past, past))
    removed = remove_stale_temps(tmp_path, ".e.*.tmp", older_than=time.time() - 1)
    assert removed == [old]
    assert young.exists() and other.exists(), "a temp being written now, or of another entry, is kept"


def test_move_aside_keeps_every_damaged_copy(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("1")
    first = move_aside(path)
    path.write_text("2")
    second = move_aside(path)
    assert first != second and first.read_text() == "1" and second.read_text() == "2"
    assert first.name.startswith("a.json.corrupt-") and not path.exists()
    assert move_aside(path) is None


@pytest.mark.parametrize(
    "text, ok",
    [('{"top1": 90.5, "top5": 99}', True), ('{"top1": true, "top5": 99}', False), ('{"top1": 1e999}', False)],
)
def test_cached_records_must_hold_finite_numbers(tmp_path, text, ok, capsys):
    path = tmp_path / "r.json"
    path.write_text(text)
    assert (read_cached_record(path, ("top1", "top5")) is not None) == ok
    assert path.exists() == ok and ("warning:" in capsys.readouterr().err) != ok
    assert read_cached_record(tmp_path / "missing.json", ("top1",)) is None
