"""Tables and plots across run folders: group runs that differ only by seed, mean ± std over seeds.

A run folder (written by :mod:`letkd.engine`) holds ``config.yaml``, ``metrics.jsonl`` (one JSON object per
epoch) and ``summary.json``. :func:`collect_runs` (:mod:`letkd.report.read`) reads them, :func:`summarize`
(:mod:`letkd.report.summary`) groups the runs by (dataset, teacher, student, method label, config) and
:func:`write_report` (:mod:`letkd.report.write`) writes ``report.md``, ``report.csv`` and ``accuracy.png``.
:mod:`letkd.report.paper` lays the groups out as the paper's tables (methods × teacher→student pairs) beside
the published numbers; :mod:`letkd.report.ablation` lays out its ablations (Tables 4–6, Fig. 1). Every table
and figure of the paper is data (:mod:`letkd.report.paper_data`, ``paper_results.yaml``), read by
``letkd report --layout <id>`` (:mod:`letkd.report.layouts`) and ``letkd paper`` (:mod:`letkd.report.plan`).

Runs are in the same group when their configs are identical except for the seed and settings that do not
change the experiment (paths, device, progress bars, worker counts); the config ``name`` is compared with a
trailing seed suffix (``-seed3``, ``_s3``) removed.
"""

from letkd.engine.rundir import CONFIG, METRICS, SUMMARY
from letkd.report.paper import (
    PaperCell,
    PaperTable,
    paper_tables,
    tables_csv,
    tables_markdown,
    write_paper_tables,
)
from letkd.report.paper_data import PaperEntry, load_paper_results
from letkd.report.read import (
    IGNORED_KEYS,
    ReportError,
    RunRecord,
    SkippedRun,
    collect_runs,
    config_variant,
    find_run_dirs,
    method_label,
    read_run,
    strip_seed_suffix,
)
from letkd.report.summary import GroupRow, seed_values, summarize
from letkd.report.write import (
    CSV,
    CSV_COLUMNS,
    MARKDOWN,
    PLOT,
    plot_accuracy,
    repeat_notes,
    to_csv,
    to_markdown,
    write_outputs,
    write_report,
)

__all__ = [
    "CONFIG",
    "CSV",
    "CSV_COLUMNS",
    "IGNORED_KEYS",
    "MARKDOWN",
    "METRICS",
    "PLOT",
    "SUMMARY",
    "GroupRow",
    "PaperCell",
    "PaperEntry",
    "PaperTable",
    "ReportError",
    "RunRecord",
    "SkippedRun",
    "collect_runs",
    "config_variant",
    "find_run_dirs",
    "load_paper_results",
    "method_label",
    "paper_tables",
    "tables_csv",
    "tables_markdown",
    "plot_accuracy",
    "read_run",
    "repeat_notes",
    "strip_seed_suffix",
    "seed_values",
    "summarize",
    "to_csv",
    "to_markdown",
    "write_outputs",
    "write_paper_tables",
    "write_report",
]
