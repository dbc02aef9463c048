"""maskflow: face-mask detection by transfer learning, as an experiment-tracked pipeline."""

__version__ = "0.1.0"
