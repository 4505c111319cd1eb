"""``letkd data check imagenet``: a complete folder passes; every kind of gap in a tiny fake ImageNet is
reported at once (expected counts injected), and the command exits 1."""

from __future__ import annotations

from pathlib import Path

from letkd.cli import main as cli_main
from letkd.data.check import IMAGENET, Expected, check_image_folders, report_lines

TINY = Expected(train_images=12, val_images=6, classes=3, val_per_class=2)
CLASSES = ["n01", "n02", "n03"]


def _tree(root: Path, train: dict[str, int], val: dict[str, int]) -> Path:
    for split, counts in (("train", train), ("val", val)):
        for wnid, n in counts.items():
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{wnid}_{i}.JPEG").write_bytes(b"\xff\xd8")
    return root


def test_a_complete_folder_passes(tmp_path):
    result = check_image_folders(_tree(tmp_path, dict.fromkeys(CLASSES, 4), dict.fromkeys(CLASSES, 2)), TINY)
    assert result.complete and result.problems == []
    assert report_lines(result)[-1] == "complete"
    assert (result.counts["train"].images, result.counts["val"].images) == (12, 6)


def test_every_gap_is_reported_at_once(tmp_path):
    root = _tree(tmp_path, {"n01": 4, "n02": 4, "n03": 0}, {"n01": 2, "n02": 1, "n04": 2})
    (root / "val" / "loose_1.JPEG").write_bytes(b"")
    (root / "train" / "n01" / "notes.txt").write_text("x")
    result = check_image_folders(root, TINY)
    text = "\n".join(result.problems)
    assert "train: 8 of 12 images (4 missing)" in text
    assert "train: 1 empty class folder(s): n03" in text
    assert "train: 1 files that are not images" in text
    assert "val: 1 images outside class folders (sort them into class folders, e.g. with valprep.sh)" in text
    assert "val: 1 class(es) of train/ missing: n03" in text
    assert "val: 1 class(es) not in train/ (their labels are unknown): n04" in text
    assert "val: 1 class(es) with fewer than 2 images: n02 (1)" in text
    assert "val: 5 of 6 images (1 missing)" in text
    assert report_lines(result)[-1] == f"incomplete: {len(result.problems)} problem(s)"


def test_the_command_checks_against_ilsvrc_2012(tmp_path, capsys):
    assert (IMAGENET.train_images, IMAGENET.val_images, IMAGENET.classes) == (1_281_167, 50_000, 1000)
    _tree(tmp_path / "imagenet", dict.fromkeys(CLASSES, 4), dict.fromkeys(CLASSES, 2))
    assert cli_main(["data", "check", "imagenet", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"ImageNet at {tmp_path / 'imagenet'}:" in out
    assert (
        "train: 12 of 1,281,167 images (1,281,155 missing)" in out and "3 class folders, 1000 expected" in out
    )
    assert cli_main(["data", "check", "imagenet", str(tmp_path / "nowhere")]) == 1
    assert "imagenet" in capsys.readouterr().err.lower()
