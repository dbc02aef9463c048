"""Mistakes a user makes and can fix, and how every entry point reports them: one line
that names the problem and the fix, exit code 2 (a bad option or override) or 1 (the data,
weights, model or machine), no traceback unless ``HYDRA_FULL_ERROR=1``."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable


class UserError(Exception):
    """Its message names the problem and the fix."""

    exit_code = 1


class UsageError(UserError):
    """A bad command-line option or Hydra override."""

    exit_code = 2


class DataError(UserError, ValueError):
    """No usable data where the config points."""


class ModelNotFound(UserError, LookupError):
    """A model URI that does not resolve."""

    @classmethod
    def at(cls, uri: str, store: str, cause: BaseException, fix: str) -> "ModelNotFound":
        """The one wording: which URI, in which store, MLflow's reason, and ``fix``."""
        return cls(f"model {uri} does not resolve in {store} ({one_line(cause)[:300]}): "
                   f"run `python -m maskflow.pipeline` to register one, or {fix}")


def full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def report(prog: str, exc: UserError) -> int:
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return exc.exit_code


def cli(prog: str) -> Callable:
    """Wrap a command's ``main``: a :class:`UserError` becomes one line and its exit code."""

    def wrap(main: Callable[..., int | None]) -> Callable[..., int | None]:
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except UserError as exc:
                if full_error():
                    raise
                return report(prog, exc)

        return run

    return wrap
