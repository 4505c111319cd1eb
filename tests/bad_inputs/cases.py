"""The table of bad inputs: one row per kind of mistake (the command line, its exit status, a phrase of its
one message) — adding a case is adding a row. Paths are relative to the workspace (see conftest.py):

- ``runs/done``: a finished digits run (vanilla resnet8); ``runs/malicious_last``: the same with a last.pt
  whose unpickling would run code; ``files/``: checkpoints and configs of every bad kind;
  ``datasets/``: tiny Fashion-MNIST folders (valid, corrupt, empty); ``reports/``: folders to report on;
  ``out/``: where cases may write. ``{fast}`` expands to settings that make any training take a second.
"""

from __future__ import annotations

from dataclasses import dataclass

#: a teacher that needs no training: untrained resnet20 weights
TEACHER = "teacher.train_config=null teacher.checkpoint=files/teacher.pt"
#: what an expensive stage would leave behind (a trained teacher, fitted supervision, teacher accuracy)
EXPENSIVE = ("runs/teachers", "artifacts")
KD, LETKD2, VANILLA = "configs/digits/kd.yaml", "configs/digits/letkd2.yaml", "configs/digits/resnet8.yaml"


def one_layer(student_tap: str, teacher_tap: str) -> str:
    """An override giving letKD one codebook layer between these taps (quoted for the command line)."""
    layer = f"kind: codebook, student_tap: {student_tap}, teacher_tap: {teacher_tap}, num_templates: 8"
    return f"'method.params.layers=[{{{layer}}}]'"


@dataclass(frozen=True)
class Case:
    """One bad input. ``code`` 0: a warning case (``phrase`` in a ``warning:`` line, ``stdout`` in the
    output); otherwise exactly one ``error:`` line containing ``phrase``. ``absent``: paths that must not
    exist afterwards; ``hold``: a run folder whose lock another holder keeps during the case."""

    name: str
    argv: str
    code: int
    phrase: str
    absent: tuple[str, ...] = ()
    hold: str | None = None
    stdout: str = ""


CASES = [
    # ------------------------------------------------------------------------------------------ config
    Case("config-missing", "train nope.yaml", 1, "config file not found: nope.yaml"),
    Case("config-invalid-yaml", "train files/invalid.yaml", 1, "not valid YAML"),
    Case("config-not-a-mapping", "train files/list.yaml", 1, "top level must be a mapping"),
    Case("config-empty", "train files/empty.yaml", 1, "empty"),
    Case("config-unknown-key", f"train {VANILLA} data.nope=1", 1, "unknown key 'data.nope'"),
    Case("config-nan-number", f"train {VANILLA} train.lr=nan", 1, "train.lr"),
    Case("config-negative-momentum", f"train {VANILLA} train.momentum=-1", 1, "train.momentum"),
    Case("config-name-leaves-runs", f"train {VANILLA} name=../x", 1, "name"),
    Case("override-syntax", f"train {VANILLA} justaword", 1, "override 'justaword' must look like"),
    Case("override-into-non-section", f"train {VANILLA} seed.x=1", 1, "'seed' is not a section"),
    Case("unknown-dataset", f"train {VANILLA} data.name=nope", 1, "unknown dataset 'nope'"),
    Case("unknown-model", f"train {VANILLA} model.name=nope", 1, "unknown model 'nope'"),
    Case("unknown-method", f"train {VANILLA} method.name=nope", 1, "error: unknown method 'nope'; known"),
    Case("bad-method-params", f"run {KD} method.params.temperature=-1 {TEACHER}", 1, "temperature",
         absent=EXPENSIVE),
    Case("train-with-teacher", f"train {KD}", 1, "'letkd train' trains a model on its own"),
    Case("fit-unknown-method", f"fit {LETKD2} method.name=nope", 1, "error: unknown method 'nope'; known"),
    Case("fit-bad-tap", f"fit {LETKD2} {TEACHER} {one_layer('penultimate', 'layer9')}", 1, "layer9",
         absent=EXPENSIVE),
    Case("sweep-missing-config", "sweep nope.yaml --seeds 1 --out out/sweep", 1, "nope.yaml",
         absent=("out/sweep",)),
    # ------------------------------------------------------------------------------------------ device
    Case("device-cuda-flag", f"train {VANILLA} --out out/cuda --device cuda {{fast}}", 1,
         "no CUDA GPU is available here: use --device cpu or --device auto", absent=("out/cuda",)),
    Case("device-cuda-config", f"run {KD} train.device=cuda {TEACHER} --out out/cuda2", 1,
         "no CUDA GPU is available here", absent=("out/cuda2", *EXPENSIVE)),
    Case("device-unknown", "eval --checkpoint runs/done/best.pt --data digits --device tpu", 1,
         "unknown device 'tpu'"),
    # --------------------------------------------------------------- checks before the expensive stages
    Case("student-model-unknown-before-teacher", f"run {LETKD2} model.name=nope --out out/m", 1,
         "unknown model 'nope'", absent=("out/m", *EXPENSIVE)),
    Case("student-tap-bad-before-teacher", f"run {LETKD2} --out out/st "
         f"{one_layer('bogus', 'penultimate')}", 1,
         "student tap 'bogus'", absent=("out/st", *EXPENSIVE)),
    Case("teacher-tap-bad-before-teacher", f"run {LETKD2} --out out/tt "
         f"{one_layer('penultimate', 'bogus')}", 1,
         "teacher tap 'bogus'", absent=("out/tt", *EXPENSIVE)),
    # a patch-3 ViT student has a 10×10 token grid, resnet20's intermediate map is 8×8: no integer ratio
    Case("grid-mismatch-before-teacher", f"run {LETKD2} --out out/g model.name=vit_pico_p4 "
         f"model.kwargs.patch_size=3 {one_layer('intermediate', 'intermediate')}", 1,
         "grid mismatch", absent=("out/g", *EXPENSIVE)),
    # --------------------------------------------------------------------------------- data
    Case("train-dataset-missing", f"train {VANILLA} data.name=fashion_mnist data.root=datasets/empty "
         "--out out/d1 {fast}", 1, "dataset 'fashion_mnist' not found"),
    Case("train-dataset-corrupt", f"train {VANILLA} data.name=fashion_mnist data.root=datasets/fm_corrupt "
         "--out out/d0 {fast}", 1, "bad magic"),
    Case("run-dataset-missing", f"run {KD} {TEACHER} data.name=fashion_mnist data.root=datasets/empty "
         "--out out/d2 {fast}", 1, "dataset 'fashion_mnist' not found", absent=EXPENSIVE),
    Case("run-dataset-corrupt", f"run {KD} {TEACHER} data.name=fashion_mnist data.root=datasets/fm_corrupt "
         "--out out/d3 {fast}", 1, "bad magic", absent=EXPENSIVE),
    Case("eval-dataset-missing", "eval --checkpoint runs/done/best.pt --data fashion_mnist "
         "--root datasets/empty --device cpu", 1, "dataset 'fashion_mnist' not found"),
    Case("eval-other-dataset-warns", "eval --checkpoint runs/done/best.pt --data fashion_mnist "
         "--root datasets/fm_ok --device cpu --workers 0", 0,
         "trained on digits (10 classes), evaluating on fashion_mnist", stdout="top-1"),
    # --------------------------------------------------------------------------------- teacher
    Case("teacher-checkpoint-missing", f"run {KD} teacher.train_config=null teacher.checkpoint=nope.pt "
         "--out out/t1", 1, "/nope.pt (set teacher.checkpoint=PATH", absent=EXPENSIVE),
    Case("teacher-checkpoint-malicious", f"run {KD} teacher.train_config=null "
         "teacher.checkpoint=files/malicious.pt --out out/t2", 1, "refused: unpickling it would run code (",
         absent=EXPENSIVE),
    # --------------------------------------------------------------------------------- run folders
    Case("resume-without-last", f"train {VANILLA} --out out/fresh --resume {{fast}}", 1,
         "cannot resume: no checkpoint at out/fresh/last.pt"),
    Case("resume-malicious-last", f"run {VANILLA} --out runs/malicious_last --resume {{fast}}", 1,
         "refused: unpickling it would run code ("),
    Case("rerun-finished-run", f"train {VANILLA} --out runs/done {{fast}}", 1,
         "already holds a run (config.yaml, metrics.jsonl, summary.json, last.pt, best.pt): pass --resume"),
    Case("out-not-writable", f"train {VANILLA} --out files/a_file/run {{fast}}", 1,
         "cannot write the run folder files/a_file/run"),
    Case("run-folder-busy", f"train {VANILLA} --out out/busy {{fast}}", 1,
         "another process (pid", hold="out/busy"),
    Case("diverged", f"train {VANILLA} --out out/div {{fast}} train.lr=1e30 train.max_steps_per_epoch=4", 1,
         "stopped. no checkpoint was written (it diverged in the first epoch). Possible causes: train.lr"),
    # --------------------------------------------------------------------------- checkpoints / eval
    Case("eval-checkpoint-missing", "eval --checkpoint nope.pt --data digits", 1,
         "checkpoint file not found: nope.pt"),
    Case("eval-checkpoint-malicious", "eval --checkpoint files/malicious.pth --data digits --model resnet8",
         1, "refused: unpickling it would run code ("),
    Case("eval-batch-size-zero", "eval --checkpoint runs/done/best.pt --data digits --batch-size 0", 1,
         "--batch-size 0: must be at least 1"),
    Case("inspect-without-kd-layers", "inspect runs/done --device cpu --out out/insp", 1,
         "needs a run with KD layers", absent=("out/insp",)),
    # ----------------------------------------------------------------------------------------- export
    Case("export-malicious", "export files/malicious.pt --out out/e1.pt2", 1,
         "refused: unpickling it would run code (", absent=("out/e1.pt2",)),
    Case("export-config-as-checkpoint", f"export {VANILLA} --out out/e2.pt2", 1,
         "cannot read checkpoint", absent=("out/e2.pt2",)),
    Case("export-random-bytes", "export files/random.bin --out out/e3.pt2", 1, "cannot read checkpoint",
         absent=("out/e3.pt2",)),
    Case("export-missing-file", "export nope.pt --out out/e4.pt2", 1, "checkpoint file not found",
         absent=("out/e4.pt2",)),
    Case("export-shape-mismatch", "export runs/done/best.pt --num-classes 5 --out out/e5.pt2", 1,
         "--num-classes 5 but the checkpoint holds a 10-class net", absent=("out/e5.pt2",)),
    Case("export-input-size-syntax", "export runs/done/best.pt --input-size a,b --out out/e6.pt2", 1,
         "--input-size 'a,b': expected C,H,W", absent=("out/e6.pt2",)),
    Case("export-input-size-unfit", "export runs/done/best.pt --input-size 1,8,8 --out out/e7.pt2", 1,
         "--input-size 1,8,8 differs from 3,32,32, the input resnet8 was trained on", absent=("out/e7.pt2",)),
    Case("export-out-suffix", "export runs/done/best.pt --out out/e8.txt", 1,
         "refused, the suffix says which format to write", absent=("out/e8.txt",)),
    # ----------------------------------------------------------------------------------------- report
    Case("report-out-is-file", "report runs/done --out files/a_file", 1, "--out files/a_file is a file"),
    Case("report-no-runs", "report reports/none --out out/r1", 1, "no run folders", absent=("out/r1",)),
    Case("report-wrong-type-skipped", "report reports/mixed --out out/r2", 0, "wrong_type: ",
         stdout="1 run in 1 group"),
    Case("report-busy-run-skipped", "report reports/busy --out out/r3", 0, "still writing it",
         hold="reports/busy/writing", stdout="1 run in 1 group"),
]  # fmt: skip
