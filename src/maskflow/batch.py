"""``python -m maskflow.batch``: the batch job of :mod:`maskflow.serving.batch`, by its short name."""
import sys

from maskflow.serving.batch import main

if __name__ == "__main__":
    sys.exit(main())
