"""``python -m letkd`` — same as the ``letkd`` console script."""

from letkd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
