"""The files the download rows serve or plant: published-teacher files of every bad kind (as a mirror holds
them), ``cifar_teachers.tar`` archives of every bad layout, and dataset archives that fail their md5.
Made once per session (a resnet56 state dict is 3.4 MB)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import torch

from bad_inputs.conftest import RunsCodeWhenUnpickled

CKPT = "ckpt_epoch_240.pth"
MEMBER = f"cifar_teachers/resnet56_vanilla/{CKPT}"


def torch_bytes(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def tar_bytes(members: list[tuple[str, bytes | None]], mode: str = "w") -> bytes:
    """A tar of ``(name, data)`` members; ``data`` None makes the member a symbolic link to /etc/passwd."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
                continue
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def teacher_files(marker: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``({case: file a mirror serves as resnet56_vanilla/ckpt_epoch_240.pth}, {case: cifar_teachers.tar})``;
    unpickling the code-running ones would create ``marker``."""
    from letkd.models import create_model

    torch.manual_seed(0)
    good = torch_bytes({"model": create_model("resnet56", 100).state_dict(), "epoch": 240, "accuracy": 72.34})
    evil = RunsCodeWhenUnpickled(marker)
    files = {
        "good": good,
        "trunc": good[: len(good) // 2],
        "wrongarch": torch_bytes({"model": create_model("resnet20", 100).state_dict()}),
        "wrongclasses": torch_bytes({"model": create_model("resnet56", 10).state_dict()}),
        "evil": torch_bytes({"model": evil, "epoch": 240}),
        "evil2": torch_bytes({"model": create_model("resnet56", 100).state_dict(), "optimizer": evil}),
        "evillegacy": torch_bytes({"model": evil}, legacy=True),
        "evilpickle": pickle.dumps(evil, protocol=4),
        "html": b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body></body></html>\n",
        "empty": b"",
    }
    good_tar = tar_bytes([(MEMBER, good)])
    tars = {
        "good": good_tar,
        "dotslash": tar_bytes([("./" + MEMBER, good)]),
        "topfolder": tar_bytes([("release-2021/" + MEMBER, good)]),
        "othername": tar_bytes([(f"cifar_teachers/resnet56/{CKPT}", good)]),
        "wrongarch": tar_bytes([(MEMBER, files["wrongarch"])]),
        "evil": tar_bytes([(MEMBER, files["evil"])]),
        "html": tar_bytes([(MEMBER, b"<html>error</html>")]),
        "trunc": good_tar[: len(good_tar) // 2],
        "htmlpage": b"<!DOCTYPE html><html><body>Error 503</body></html>",
        "symlink": tar_bytes([(MEMBER, None)]),
        "mixed": tar_bytes(
            [
                (MEMBER, good),
                (f"cifar_teachers/wrn_40_2_vanilla/{CKPT}", b"junk"),
                (f"cifar_teachers/resnet110_vanilla/{CKPT}", files["evil"]),
            ]
        ),  # fmt: skip
    }
    return files, tars


def fake_cifar_archive() -> bytes:
    """A small tar.gz under CIFAR-100's name, with a member that would escape the folder (never extracted:
    its md5 is wrong)."""
    members = [
        ("cifar-100-python/meta", b"x"),
        ("cifar-100-python/test", b"y"),
        ("cifar-100-python/../../../PWNED", b"z"),
    ]
    return tar_bytes(members, mode="w:gz")
