# ruff: noqa: E501  (a table: one row per line reads best)
"""The rows of the second probe (``shared/probes/bad-inputs-2.md``) that run as one command in-process: its
id, the command (paths as in :mod:`bad_inputs.probe_workspace`; ``out/base_<kind>`` there is ``runs/<kind>``
here, ``runs/done`` the vanilla run), the exit status and a phrase of its one message. Rows that need a
server, a signal or several steps are tests of their own in ``test_probe_*.py``; every row id of the table
(but the sweep rows, S* and G6) is in one of them.

``{root}`` is the project root (the CIFAR configs are read from there); a code-0 row names a phrase of its
standard output (``stdout``), or of a ``warning:`` line when ``warns``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bad_inputs.cases import TEACHER

LETKD2 = "runs/letkd2/best.pt"
CIFAR_KD = "{root}/configs/cifar100/resnet56_resnet20/kd.yaml"
FIT = f"fit configs/digits/letkd1.yaml {TEACHER} --device cpu --no-progress data.train_subset=64"
RUN = (
    "run configs/digits/vanilla.yaml train.epochs=1 train.max_steps_per_epoch=2 data.train_subset=64 "
    "data.batch_size=16 data.test_subset=20"
)
SUB = "'method.params.layers=[{kind: subclass, student_tap: intermediate, teacher_tap: intermediate, "


@dataclass(frozen=True)
class Row:
    id: str
    argv: str
    code: int
    phrase: str
    absent: tuple[str, ...] = ()
    stdout: str = ""
    warns: bool = False
    hold: str | None = None


def _layer(kind: str, extra: str = "", s_tap: str = "penultimate", t_tap: str = "penultimate") -> str:
    return f"'method.params.layers=[{{kind: {kind}, student_tap: {s_tap}, teacher_tap: {t_tap}{extra}}}]'"


ROWS = [
    # ------------------------------------------------------------------------------------- downloads
    Row("D4", "eval --checkpoint runs/done/best.pt --data imagenet --download", 1, "bring-your-own"),
    Row("D5", f"run {CIFAR_KD} teacher.checkpoint=crd:resnet9000 --out out/d5", 1,
        "unknown published teacher 'crd:resnet9000'", absent=("out/d5",)),
    Row("D6", "run configs/digits/kd.yaml teacher.checkpoint=crd:resnet9000 --out out/d6 train.epochs=1", 1,
        "unknown published teacher 'crd:resnet9000'", absent=("out/d6", "runs/teachers")),
    Row("D7", "eval --checkpoint crd:resnet9000 --data digits", 1, "unknown published teacher 'crd:resnet9000'"),
    Row("D8", "run configs/digits/kd.yaml teacher.checkpoint=crd: --out out/d8 train.epochs=1", 1,
        "teacher.checkpoint: got a mapping ({'crd': None}), not a path or name", absent=("out/d8",)),
    Row("D9", "run configs/digits/kd.yaml teacher.checkpoint=crd:resnet56 --out out/d9 train.epochs=1", 1,
        "is a resnet56, but teacher.name is 'resnet20': set teacher.name=resnet56 or pick one of crd:",
        absent=("out/d9",)),
    Row("M1", "eval --checkpoint crd:resnet56 --data digits --json", 1,
        "crd:resnet56 is a 100-class cifar100 teacher but --data digits has 10 classes: evaluate it with "
        "--data cifar100, or pass --num-classes 100"),
    # ---------------------------------------------------------------------------------------- inspect
    Row("I1", "inspect runs/done --images 2 --stats-images 16 --device cpu --out out/i1", 1,
        "needs a run with KD layers (method letkd or quest); runs/done was trained with method 'vanilla'",
        absent=("out/i1",)),
    Row("I2", "inspect runs/kd --images 2 --stats-images 16 --device cpu --out out/i2", 1,
        "was trained with method 'kd'", absent=("out/i2",)),
    Row("I3", "inspect runs/simkd --images 2 --stats-images 16 --device cpu --out out/i3", 1,
        "was trained with method 'simkd'", absent=("out/i3",)),
    Row("I4", "inspect runs/letkd2 --images 2 --stats-images 16 --device cpu --out out/i4", 0, "",
        stdout="wrote out/i4/index.md"),
    Row("I5", "inspect runs/quest --images 2 --stats-images 16 --device cpu --out out/i5", 0, "",
        stdout="wrote out/i5/index.md"),
    Row("I6", "inspect runs/letkd2 --checkpoint last.pt --images 2 --stats-images 16 --device cpu "
        "--out out/i6", 0, "", stdout="wrote out/i6/index.md"),
    Row("I7", "inspect runs/letkd2 --images 0 --device cpu --out out/i7", 1, "--images 0: must be at least 1"),
    Row("I8", "inspect runs/letkd2 --images -3 --device cpu --out out/i8", 1, "--images -3: must be at least 1"),
    Row("I9", "inspect runs/letkd2 --images 100000 --stats-images 16 --device cpu --out out/i9", 0, "",
        stdout="wrote out/i9/index.md"),
    Row("I10", "inspect runs/letkd2 --stats-images 0 --device cpu --out out/i10", 1,
        "--stats-images 0: must be at least 1", absent=("out/i10",)),
    Row("I11", "inspect runs/letkd2 --stats-images -5 --device cpu --out out/i11", 1,
        "--stats-images -5: must be at least 1", absent=("out/i11",)),
    Row("I12", "inspect runs/letkd2 --images 1 --stats-images 1000000000000 --device cpu --out out/i12", 0, "",
        stdout="wrote out/i12/index.md"),
    Row("I13", "inspect runs/letkd2 --images 1 --stats-images 1 --device cpu --out out/i13", 0, "",
        stdout="wrote out/i13/index.md"),
    Row("I14", "inspect runs/letkd2 --checkpoint runs/kd/best.pt --images 2 --device cpu --out out/i14", 1,
        "has no KD layer at ['layer3.0', 'layer3']: not this config's run?"),
    Row("I15", "inspect runs/letkd2 --checkpoint runs/letkd1/best.pt --images 2 --device cpu --out out/i15",
        1, "has no KD layer at ['layer3.0']"),
    Row("I16", "inspect runs/letkd2 --checkpoint nope.pt --images 2 --device cpu --out out/i16", 1, "nope.pt"),
    Row("I17", "inspect runs/letkd2 --images 2 --stats-images 16 --device cpu --out files/a_file", 1,
        "--out files/a_file is a file; give a folder"),
    Row("I18", "inspect configs --images 2 --device cpu", 1, "configs is not a run folder (no config.yaml)"),
    Row("I19", "inspect configs/digits/kd.yaml --images 2 --device cpu", 1, "is not a run folder"),
    Row("I20", "inspect runs/letkd2 --num-images 3", 2, "unrecognized arguments: --num-images"),
    Row("I21", "inspect runs/ed_model --images 2 --stats-images 16 --device cpu --out out/i21", 0, "",
        stdout="wrote out/i21/index.md"),
    Row("I22", "inspect runs/ed_K --images 2 --stats-images 16 --device cpu --out out/i22", 1,
        "has 32 templates but runs/ed_K/config.yaml asks for 64: the config was edited after training"),
    Row("I24", "inspect runs/ed_method --images 2 --stats-images 16 --device cpu --out out/i24", 1,
        "invalid params for method 'quest'"),
    Row("I25", "inspect runs/ed_junk --images 2 --stats-images 16 --device cpu --out out/i25", 1,
        "not valid YAML"),
    Row("I26", "inspect runs/ed_cache --images 2 --stats-images 16 --device cpu --out out/i26", 1,
        "run `letkd fit runs/ed_cache/config.yaml` first"),
    Row("I27", "inspect runs/ed_tap --images 2 --stats-images 16 --device cpu --out out/i27", 1,
        "has no KD layer at ['layer2']"),
    Row("I28", "inspect runs/ed_dataset --images 2 --stats-images 16 --device cpu --out out/i28", 1,
        "run `letkd fit runs/ed_dataset/config.yaml` first"),
    Row("I29", "inspect runs/ed_nolayers --images 2 --stats-images 16 --device cpu --out out/i29", 1,
        "List should have at least 1 item"),
    # ------------------------------------------------------------------------------------------- eval
    *(Row(f"E{i}", f"eval --checkpoint runs/{kind}/best.pt --data digits --json --device cpu --workers 0", 0, "",
          stdout='"top1"') for i, kind in ((1, "done"), (2, "kd"), (3, "letkd1"), (4, "letkd2"), (5, "quest"))),
    Row("E6", "eval --checkpoint runs/simkd/best.pt --data digits --json --device cpu", 1,
        "a 'simkd' run deploys more than its student network"),
    Row("E7", "eval --checkpoint runs/simkd/best.pt --model resnet8 --data digits --json", 1,
        "a 'simkd' run deploys more than its student network"),
    Row("E8", "eval --checkpoint runs/letkd2/last.pt --data digits --json --workers 0", 0, "", stdout='"top1"'),
    Row("E9", "eval --checkpoint runs/letkd2 --data digits", 1,
        "--checkpoint runs/letkd2 is a folder, not a checkpoint file; a run folder: pass runs/letkd2/best.pt"),
    Row("E10", f"eval --checkpoint {LETKD2} --data digits --batch-size -1 --json", 1,
        "--batch-size -1: must be at least 1"),
    Row("E11", f"eval --checkpoint {LETKD2} --data digits --batch-size 1000000000 --json --workers 0", 0, "",
        stdout='"top1"'),
    Row("E12", f"eval --checkpoint {LETKD2} --data digits --split bogus --json", 1, "valid splits: train, test"),
    Row("E13", f"eval --checkpoint {LETKD2} --data digits --split train --json --workers 0 --batch-size 500", 0, "",
        stdout='"split": "train"'),
    Row("E14", f"eval --checkpoint {LETKD2} --data digits --workers -1 --json", 1, "--workers -1: must be at least 0"),
    Row("E15", f"eval --checkpoint {LETKD2} --data digits --num-classes 0 --json", 1,
        "--num-classes 0: must be at least 1"),
    Row("E16", f"eval --checkpoint {LETKD2} --data digits --num-classes -2 --json", 1,
        "--num-classes -2: must be at least 1"),
    Row("E17", f"eval --checkpoint {LETKD2} --data digits --device bogus --json", 1, "unknown device 'bogus'"),
    Row("E18", f"eval --checkpoint {LETKD2} --data digits --device cuda --json", 1,
        "no CUDA GPU is available here"),
    Row("E19", f"eval --checkpoint {LETKD2} --data digits --root /nonexistent --json --workers 0", 0, "",
        stdout='"top1"'),
    Row("E20", f"eval --checkpoint {LETKD2} --data cifar100 --root out/none --json", 1,
        "dataset 'cifar100' not found"),
    Row("E21", f"eval --checkpoint {LETKD2} --data bogus --json", 1, "unknown dataset 'bogus'"),
    # ----------------------------------------------------------------------------------------- export
    *(Row(f"X{i}", f"export runs/{kind}/best.pt --out out/x{i}.pt2", 0, "", stdout="exported program matches")
      for i, kind in ((1, "done"), (2, "kd"), (3, "letkd2"), (4, "quest"))),
    Row("X5", "export runs/letkd2/last.pt --out out/x5.pt2", 0, "", stdout="exported program matches"),
    Row("X6", "export runs/simkd/best.pt --out out/x6.pt2", 1, "deploys more than its student network",
        absent=("out/x6.pt2",)),
    Row("X7", "export runs/simkd/last.pt --model resnet8 --out out/x7.pt2", 1, "deploys more than its student",
        absent=("out/x7.pt2",)),
    Row("X8", f"export {LETKD2} --out out/x8.pt2 --input-size 0,0,0", 1, "expected C,H,W as three positive"),
    Row("X9", f"export {LETKD2} --out out/x9.pt2 --input-size -3,32,32", 2, "expected one argument"),
    Row("X10", f"export {LETKD2} --out out/x10.pt2 --input-size 3,1,1", 1,
        "--input-size 3,1,1 differs from 3,32,32, the input resnet8 was trained on", absent=("out/x10.pt2",)),
    Row("X11", f"export {LETKD2} --out out/x11.pt2 --input-size 3,2000,2000", 1,
        "--input-size 3,2000,2000 differs from 3,32,32", absent=("out/x11.pt2",)),
    Row("X12", f"export {LETKD2} --out out/x12.pt2 --input-size 3,32", 1, "expected C,H,W"),
    Row("X13", f"export {LETKD2} --out out/x13.pt2 --input-size a,b,c", 1, "expected C,H,W"),
    Row("X14", f"export {LETKD2} --out out/x14.pt2 --num-classes 0", 1, "--num-classes 0: must be at least 1"),
    Row("X15", f"export {LETKD2} --out out/x15.pt2 --num-classes -5", 1, "--num-classes -5: must be at least 1"),
    Row("X16", f"export {LETKD2} --out out/x16.pt2 --num-classes 100000000", 1,
        "--num-classes 100000000: must be at most 1,000,000"),
    Row("X17", f"export {LETKD2} --out out/x17.pt2 --num-classes 100", 1,
        "--num-classes 100 but the checkpoint holds a 10-class net"),
    Row("X18", f"export {LETKD2} --out out/x18.pt2 --model resnet20", 1,
        "--model resnet20 but the checkpoint holds a resnet8"),
    Row("X19", f"export {LETKD2} --out out/x19.pt2 --model nonexistent", 1, "--model nonexistent but"),
    Row("X20", "export runs/done/best.pt --out out/x20/a/b/c/v.pt2", 0, "", stdout="wrote out/x20/a/b/c/v.pt2"),
    Row("X21", "export runs/done/best.pt --out files/precious.pt2", 0, "", stdout="wrote files/precious.pt2"),
    # ------------------------------------------------------------------------------------------- fit
    Row("F1", "fit configs/digits/vanilla.yaml --device cpu", 0, "", stdout="needs no teacher supervision"),
    Row("F1b", "fit configs/digits/kd.yaml --device cpu", 0, "", stdout="method 'kd' needs no teacher"),
    Row("F1c", "fit runs/simkd/config.yaml --device cpu", 0, "", stdout="method 'simkd' needs no teacher"),
    Row("F2", "fit runs/letkd2 --device cpu", 1,
        "config file runs/letkd2 is a folder: a run folder, pass runs/letkd2/config.yaml"),
    Row("F3", "fit runs/letkd2/config.yaml --device cpu --no-progress", 0, "", stdout="cached"),
    Row("F4", f"{FIT} supervision.max_rows=0", 1, "supervision.max_rows: Input should be greater than or equal to 1"),
    Row("F5", f"{FIT} supervision.max_rows=-1", 1, "supervision.max_rows"),
    Row("F6", f"{FIT} supervision.max_rows=1 supervision.cache_dir=out/f6", 1,
        "supervision.max_rows 1 is fewer than the 32 templates", absent=("out/f6",)),  # before the pass
    Row("F6-per-class", f"{FIT.replace('letkd1', 'letkd2')} supervision.rows_per_class=1 "
        "supervision.cache_dir=out/f6b", 1, "supervision.rows_per_class 1 is fewer than the 2 sub-classes",
        absent=("out/f6b",)),
    Row("F7", f"{FIT} supervision.kmeans_iters=0", 1, "supervision.kmeans_iters"),
    Row("F8", f"{FIT} supervision.extract_batch_size=100000000 supervision.cache_dir=out/f8", 0, "",
        stdout="K=32"),
    Row("F9", f"{FIT} supervision.cache_dir=/proc/nope", 1,
        "supervision.cache_dir /proc/nope: cannot be created or written"),
    Row("F10", f"{FIT} supervision.seed=-1", 1, "supervision.seed: Input should be greater than or equal to 0"),
    Row("F11", f"{FIT} supervision.cache_dir=", 1, "supervision.cache_dir: String should have at least 1"),
    # ---------------------------------------------------------------------------------------- config
    Row("C1", f"{RUN} --out out/c1 foo=1", 1, "unknown key 'foo' (from the command line: foo=1)",
        absent=("out/c1",)),
    Row("C2", "run cfg/topkey.yaml --out out/c2 train.epochs=1", 1, "unknown key 'bar'", absent=("out/c2",)),
    Row("C3", "run configs/digits/letkd1.yaml --out out/c3 train.epochs=1 'method.params.layers={kind: "
        "codebook, student_tap: penultimate, teacher_tap: penultimate}'", 1,
        "method.params.layers: Input should be a valid list", absent=("out/c3",)),
    Row("C4", "run configs/digits/letkd1.yaml --out out/c4 train.epochs=1 method.params.layers=penultimate",
        1, "Input should be a valid list", absent=("out/c4",)),
    Row("C5", "run configs/digits/letkd1.yaml --out out/c5 train.epochs=1 'method.params.layers=[1,2]'", 1,
        "method.params.layers", absent=("out/c5",)),
    Row("C6", "run configs/digits/letkd1.yaml --out out/c6 train.epochs=1 'method.params=[1,2]'", 1,
        "method.params: Input should be a valid dictionary", absent=("out/c6",)),
    Row("C7", f"run configs/digits/letkd1.yaml --out out/c7 {TEACHER} "
        + _layer("codebook", ", num_templates: 32", s_tap="layer9"), 1, "student tap 'layer9'",
        absent=("out/c7", "artifacts")),
    Row("C8", f"run configs/digits/letkd1.yaml --out out/c8 {TEACHER} "
        + _layer("codebook", ", num_templates: 32", t_tap="fc.weight"), 1, "teacher tap 'fc.weight'",
        absent=("out/c8", "artifacts")),
    Row("C9", f"run configs/digits/letkd1.yaml --out out/c9 {TEACHER} "
        + _layer("codebook", ", num_templates: 4", s_tap="classifier", t_tap="classifier"), 1,
        "not a (C, H, W) feature map", absent=("out/c9", "artifacts")),
    Row("C10", f"run configs/digits/letkd1.yaml --out out/c10 {TEACHER} "
        + _layer("codebook", "", s_tap='""', t_tap='""'), 1, "neither a tap name nor a module path",
        absent=("out/c10", "artifacts")),
    Row("C11", f"run configs/digits/letkd1.yaml --out out/c11 {TEACHER} supervision.cache_dir=out/c11c "
        "train.epochs=1 train.max_steps_per_epoch=3 data.train_subset=64 data.test_subset=20 "
        + _layer("codebook", ", num_templates: 4", s_tap="stem", t_tap="stem"), 0, "", stdout="best top-1 "),
    Row("C12", f"run configs/digits/letkd1.yaml --out out/c12 {TEACHER} train.epochs=1 "
        + _layer("codebook", ", num_templates: 20000000"), 1, "needs about", absent=("out/c12", "artifacts")),
    Row("C13", f"run configs/digits/letkd1.yaml --out out/c13 {TEACHER} supervision.cache_dir=out/c13c "
        "train.epochs=1 data.train_subset=10 data.test_subset=20 " + _layer("codebook", ", num_templates: 1000"), 1,
        "asks for K=1000 templates but the training images give only 640", absent=("out/c13",)),
    Row("C14", f"fit configs/digits/letkd2.yaml {TEACHER} --device cpu --no-progress "
        + SUB + "subclasses_per_class: 100000, lda_components: 8}]'", 1,
        "for its 1,000,000 x 1,000,000 sub-class score matrix", absent=("artifacts",)),
    Row("C15", f"fit configs/digits/letkd2.yaml {TEACHER} --device cpu --no-progress data.train_subset=64 "
        "supervision.cache_dir=out/c15 " + SUB + "subclasses_per_class: 2, lda_components: 500}]'", 0, "",
        stdout="LDA 9"),
    Row("C16", f"{RUN} --out out/c16 train.epochs=0", 1, "train.epochs: Input should be greater than or equal to 1"),
    Row("C17", "run configs/digits/vanilla.yaml --out out/c17 train.epochs=1 data.batch_size=5000", 1,
        "the training loader produced no batch"),
    Row("C18", "run configs/digits/vanilla.yaml --out out/c18 train.epochs=1 data.batch_size=5000 "
        "data.drop_last=false data.train_subset=100 data.test_subset=20", 0, "", stdout="best top-1 "),
    Row("C19", "run configs/digits/vanilla.yaml --out out/c19 train.epochs=1 data.batch_size=64 "
        "data.train_subset=64 data.test_subset=20", 0, "", stdout="best top-1 "),
    Row("C20", f"{RUN} --out out/c20 data.train_subset=0", 1, "data.train_subset", absent=("out/c20",)),
    Row("C21", f"{RUN} --out out/c21 data.train_subset=1000000000", 1,
        "data.train_subset 1,000,000,000 is more than the 1,437 train images of digits", absent=("out/c21",)),
    Row("C22", f"{RUN} --out out/c22 data.test_subset=1000000000", 1,
        "data.test_subset 1,000,000,000 is more than the 360 test images of digits", absent=("out/c22",)),
    Row("C23", f"{RUN} --out out/c23 data.train_subset=1", 1, "the training loader produced no batch"),
    Row("C24", f"{RUN} --out out/c24 data.test_subset=1", 0, "", stdout="best top-1 "),
    Row("C25", f"{RUN} --out out/c25 data.train_subset=true", 1,
        "data.train_subset: expected a number, got true", absent=("out/c25",)),
    Row("C26", f"{RUN} --out out/c26 seed=18446744073709551616", 1,
        "seed: Input should be less than or equal to 4294967295", absent=("out/c26",)),
    Row("C27", f"{RUN} --out out/c27 name={'n' * 300}", 1,
        "name: is 300 bytes long; a run name becomes a folder and file names, at most 120", absent=("out/c27",)),
    Row("C28", f"{RUN} --out out/c28 'name=日本語-🙂-ü'", 0, "", stdout="best top-1 "),
    Row("C29", f"{RUN} --out out/c29 'name=\"a\\nb\"'", 1, "name: must not hold control characters",
        absent=("out/c29",)),
    Row("C30", "run cfg/bomb_topkey.yaml --out out/c30 train.epochs=1", 1,
        "its YAML aliases (*name) expand it to", absent=("out/c30",)),
    Row("C31", "run cfg/bomb_kwargs.yaml --out out/c31 train.epochs=1", 1, "its YAML aliases", absent=("out/c31",)),
    Row("C32", "run cfg/bomb_params.yaml --out out/c32 train.epochs=1", 1, "its YAML aliases", absent=("out/c32",)),
    Row("C33", "run cfg/bomb_typed.yaml --out out/c33 train.epochs=1", 1, "its YAML aliases", absent=("out/c33",)),
    Row("C34", "run configs/digits/kd.yaml --out out/c34 train.epochs=1 teacher.train_config=cfg/teacher_bomb.yaml",
        1, "cfg/teacher_bomb.yaml: its YAML aliases", absent=("out/c34", "runs/teachers")),
    Row("C35", "run cfg/big_comment.yaml --out out/c35 train.epochs=1", 1,
        "MiB is more than the 1 MiB a config file may have", absent=("out/c35",)),
    Row("C36", "run cfg/big_list.yaml --out out/c36 train.epochs=1", 1,
        "MiB is more than the 1 MiB a config file may have", absent=("out/c36",)),
    Row("typo-params", "run configs/digits/kd.yaml --out out/tp method.params.temprature=3", 1,
        "unknown key 'method.params.temprature'; did you mean 'method.params.temperature'?", absent=("out/tp",)),
    Row("typo-override", f"{RUN} --out out/c37 train.epoch=1", 1,
        "unknown key 'train.epoch' (from the command line: train.epoch=1); did you mean 'train.epochs'?",
        absent=("out/c37",)),
    # ---------------------------------------------------------------------------------------- report
    Row("R1", "report reports/live --out out/r1", 0, "another process (pid", warns=True, hold="reports/live/writing",
        stdout="1 run in 1 group"),
    Row("R2", "report reports/live --include-unfinished --out out/r2", 0, "", hold="reports/live/writing",
        stdout="2 runs in 1 group"),
    Row("R3", "report reports/junk --out out/r3", 0, "not a percentage", warns=True, stdout="1 run in 1 group"),
]  # fmt: skip
