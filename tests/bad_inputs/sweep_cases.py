"""The table of bad inputs to ``letkd sweep`` (and the report and resume cases that go with sweeps): one row
per probe case, named by its id. Paths are relative to the workspace (conftest.py) plus what
:func:`test_sweep_cases.sweep_space` adds:

- ``cfg/``: ``typo_model.yaml`` (model ``resnt8``), ``typo_tap.yaml`` (tap ``penultimat``), ``kd_T=4.yaml``
  (a config whose file name holds ``=``), ``resnet8_copy.yaml`` (another file with resnet8.yaml's name);
- ``sweeps/done``: a sweep folder holding the finished ``runs/done`` as ``digits-resnet8/seed0``;
  ``sweeps/resume``: the same run, interrupted (``last.pt``, summary not completed);
- ``sweeps/m_*``: sweep folders with a corrupt, wrong-shaped, junk-filled or folder ``sweep.json``;
- ``sweeps/logdir``: a log path that is a folder; ``sweeps/s8``: a finished and an unfinished run;
- ``out/s7a``: ``sweeps/done`` without its ``sweep.json``.
``{fast}`` expands to the settings of ``runs/done`` (a digits run of a second or two).
"""

from __future__ import annotations

from dataclasses import dataclass

from bad_inputs.cases import KD

RESNET8 = "configs/digits/resnet8.yaml"
SWEEP_DONE = f"sweep {RESNET8} --seeds 1"


@dataclass(frozen=True)
class SweepCase:
    """One probe row. ``code`` 0: ``stdout`` is printed and ``warning`` (if set) is in a ``warning:`` line;
    otherwise exactly one ``error:`` line containing ``phrase``. ``absent``: paths that must not exist
    afterwards; ``hold_run``/``hold_sweep``: a run folder / sweep folder another holder keeps meanwhile."""

    id: str
    argv: str
    code: int
    phrase: str = ""
    absent: tuple[str, ...] = ()
    hold_run: str | None = None
    hold_sweep: str | None = None
    warning: str = ""
    stdout: str = ""


N300, M250 = "n" * 300, "m" * 250

SWEEP_CASES = [
    # --------------------------------------------------------------------------- checks before any run
    SweepCase("S2a", f"sweep {KD} nope.yaml --seeds 1 --out out/s2 method.params.temperature=-1", 1,
              "invalid sweep (2 problems): (1) configs/digits/kd.yaml: ", absent=("out/s2",)),
    SweepCase("S3", f"sweep {RESNET8} ./{RESNET8} --seeds 1 --out out/s3 model.name=nope", 1,
              f"invalid sweep: {RESNET8}: unknown model 'nope'", absent=("out/s3",)),
    SweepCase("S3-name", f"sweep {RESNET8} cfg/resnet8_copy.yaml --seeds 1 --out out/s3b", 1,
              "have the same name 'digits-resnet8' (their runs would share DIR/digits-resnet8/): give one of "
              "them another 'name:' in its file", absent=("out/s3b",)),
    SweepCase("S4a", f"sweep {RESNET8} --seed-list a,b --out out/s4", 1,
              "--seed-list 'a,b': expected integers", absent=("out/s4",)),
    SweepCase("S4b", f"sweep {RESNET8} --seed-list ,,, --out out/s4", 1, "no seeds; pass --seeds N",
              absent=("out/s4",)),
    SweepCase("S4c", f"sweep {RESNET8} --seed-list ' ' --out out/s4", 1, "no seeds", absent=("out/s4",)),
    SweepCase("S4d", f"sweep {RESNET8} --seed-list -1 --out out/s4", 1,
              "seed -1 is out of range: seeds are 0 to 4294967295", absent=("out/s4",)),
    SweepCase("S4e", f"sweep {RESNET8} --seed-list 1.5 --out out/s4", 1, "expected integers",
              absent=("out/s4",)),
    SweepCase("S4f", f"sweep {RESNET8} --seed-list '0;rm -rf x' --out out/s4", 1, "expected integers",
              absent=("out/s4",)),
    SweepCase("S4g", f"sweep {RESNET8} --seed-list 0,0 --out out/s4 model.name=nope", 1,
              "unknown model 'nope'",
              warning="--seed-list 0,0: each seed is run once", absent=("out/s4",)),
    SweepCase("S4h", f"sweep {RESNET8} --seed-list 0,-1 --out out/s4 {{fast}}", 1, "seed -1 is out of range",
              absent=("out/s4",)),
    SweepCase("S4i", f"sweep {RESNET8} --seed-list 99999999999999999999999 --out out/s4 {{fast}}", 1,
              "seed 99999999999999999999999 is out of range", absent=("out/s4",)),
    SweepCase("S5", f"{SWEEP_DONE} --out files/a_file {{fast}}", 1,
              "cannot write to the sweep folder files/a_file: Not a directory; pass --out DIR"),
    SweepCase("S5b", f"{SWEEP_DONE} --out files/a_file/sub {{fast}}", 1,
              "cannot write to the sweep folder files/a_file/sub"),
    SweepCase("S9a", f"{SWEEP_DONE} --out out/s9a {{fast}} name={N300}", 1, "is 300 bytes long",
              absent=("out/s9a",)),
    SweepCase("S9b", f"sweep {RESNET8} --seeds 2 --out out/s9b {{fast}} name={M250}", 1,
              "is 250 bytes long; a run name becomes a folder and file names", absent=("out/s9b",)),
    SweepCase("S12", f"sweep {RESNET8} cfg/typo_model.yaml cfg/typo_tap.yaml --seeds 1 --out out/s12 "
              "{fast}", 1, "(1) cfg/typo_model.yaml: unknown model 'resnt8'", absent=("out/s12",)),
    SweepCase("S12-tap", "sweep cfg/typo_tap.yaml --seeds 1 --out out/s12b {fast}", 1,
              "student tap 'penultimat'", absent=("out/s12b", "runs/teachers", "artifacts")),
    SweepCase("S13", "sweep cfg/kd_T=4.yaml --seeds 1 --out out/s13 model.name=nope", 1,
              "cfg/kd_T=4.yaml: unknown model 'nope'", absent=("out/s13",)),
    SweepCase("S15", f"{SWEEP_DONE} --executor slurm --out out/s15 {{fast}}", 1,
              "cannot submit to SLURM: "),
    SweepCase("S15-pack", f"{SWEEP_DONE} --executor slurm --runs-per-gpu 2 --out out/s15b {{fast}}", 1,
              "--runs-per-gpu is for --executor local", absent=("out/s15b",)),
    SweepCase("S16", "sweep --seeds=1 --out=out/s16 nope.yaml", 1, "config file not found: nope.yaml",
              absent=("out/s16",)),
    SweepCase("S16b", "sweep nope.yaml --seeds=1 --out=out/s16", 1, "config file not found: nope.yaml",
              absent=("out/s16",)),
    # ------------------------------------------------------------------- what the sweep folder holds
    SweepCase("S10", f"sweep {RESNET8} --seeds 1 --out sweeps/done train.epochs=3", 1,
              "holds runs made with another config than asked for (in the folder -> asked): digits-resnet8 "
              "seed0: data.batch_size: 16 -> 64"),
    SweepCase("S11", f"{SWEEP_DONE} --out sweeps/resume {{fast}} train.lr=0.5 data.batch_size=8", 1,
              "digits-resnet8 seed0: data.batch_size: 16 -> 8, train.lr: 0.05 -> 0.5."),
    SweepCase("S11-run", f"run {RESNET8} --out sweeps/resume/digits-resnet8/seed0 --resume {{fast}} "
              "train.lr=0.5", 1, "cannot resume sweeps/resume/digits-resnet8/seed0: it holds a run of "
              "another config (in the folder -> asked: train.lr: 0.05 -> 0.5)"),
    SweepCase("S6", f"{SWEEP_DONE} --out sweeps/done {{fast}}", 1, "another sweep (pid ",
              hold_sweep="sweeps/done"),
    SweepCase("S1c", f"{SWEEP_DONE} --out sweeps/done {{fast}}", 1,
              "is still running in ", hold_run="sweeps/done/digits-resnet8/seed0"),
    SweepCase("S7a", f"{SWEEP_DONE} --out out/s7a {{fast}}", 0, stdout="0 completed, 1 skipped, 0 failed"),
    SweepCase("S7b", f"{SWEEP_DONE} --out sweeps/m_corrupt {{fast}}", 1,
              "sweeps/m_corrupt/sweep.json cannot be read as a sweep manifest"),
    SweepCase("S7c", f"{SWEEP_DONE} --out sweeps/m_list {{fast}}", 1,
              "is not a sweep manifest (no list of runs)"),
    SweepCase("S7d", f"{SWEEP_DONE} --out sweeps/m_junk {{fast}}", 1,
              "sweep.json has 3 invalid run entries (run 0: 'folder' is 5, not a str"),
    SweepCase("S7e", f"{SWEEP_DONE} --out sweeps/m_dir {{fast}}", 1,
              "sweeps/m_dir/sweep.json is not a file; repair it, or move it aside"),
    SweepCase("S9c", f"{SWEEP_DONE} --out sweeps/logdir {{fast}}", 1,
              "digits-resnet8-seed0.log is not a file (the log of digits-resnet8 seed0); move it aside"),
    # ------------------------------------------------------------------------------ reports of sweeps
    SweepCase("S8a", "report sweeps/s8 --out out/s8a", 0, warning="no summary.json (unfinished run",
              stdout="1 run in 1 group"),
    SweepCase("S8b", "report sweeps/s8 --include-unfinished --out out/s8b", 0, stdout="| 1/3 |"),
    SweepCase("S8b-pairs", "report sweeps/s8 --layout pairs --include-unfinished --out out/s8bp", 0,
              stdout="(unfinished: epochs 1/3)"),
    SweepCase("S8d", f"run {KD} teacher.train_config=null teacher.name=resnet8 "
              "teacher.checkpoint=runs/done/last.pt data.name=fashion_mnist data.root=datasets/fm_ok "
              "--out out/s8d {fast} data.batch_size=2 data.train_subset=null data.test_subset=null "
              "supervision.cache_dir=out/s8d_cache", 0,
              warning="runs/done/last.pt was trained on digits, this run distils on fashion_mnist",
              stdout="best top-1 "),
]  # fmt: skip
