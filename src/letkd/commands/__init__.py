"""Sub-commands of the ``letkd`` CLI, one module each (see :mod:`letkd.cli`)."""
