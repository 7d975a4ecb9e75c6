"""Quiet output: the warnings and log lines of third-party libraries kept off the user's terminal during a command.

Feast, MLflow, ibis, SQLAlchemy, DuckDB and others warn about their own deprecations and log INFO/WARNING lines on
every run, most of them about calls persona does not make itself. Inside `quiet()`:

- a warning is shown only when persona's own code issued it (the frame that called `warnings.warn`, not the frame a
  `stacklevel` points at: pandas and MLflow attribute their warnings to the caller). Filters alone cannot do this:
  Feast runs `warnings.simplefilter("once", DeprecationWarning)` when it is imported, ahead of any filter set before;
- every logger outside persona's packages logs ERROR and above only: the root logger's level covers loggers created
  later, and MLflow, which sets its own level when imported, reads it from $MLFLOW_LOGGING_LEVEL;
- `settle()`, called once a command has imported its libraries, applies the same levels to the loggers created by
  those imports and mutes MLflow's own stderr stream ("Successfully registered model ...", "Created version ...").

Everything is put back when the block ends. `quiet(verbose=True)` changes nothing. The CLI wraps every command but
`serve` (whose log is the service's output) in it; `persona --verbose COMMAND` shows everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

# persona's top-level packages: a warning issued or a logger named under one of them is persona's own.
OWN_PACKAGES = ("persona", "features", "training", "rules", "serving", "feature_repo", "bench")
THIRD_PARTY_LEVEL = logging.ERROR
MLFLOW_LEVEL_VAR = "MLFLOW_LOGGING_LEVEL"


def is_own(module: str | None) -> bool:
    """Whether a module (or logger) name belongs to persona."""
    return bool(module) and module.split(".", 1)[0] in OWN_PACKAGES


def _issuer() -> str | None:
    """The module of the code that called `warnings.warn` for the warning being shown: the first frame above this
    one that is neither in this module nor in the `warnings` module (`warn` itself is C code, without a frame)."""
    frame = sys._getframe(1)
    skip = {__file__, warnings.__file__}
    while frame is not None and frame.f_code.co_filename in skip:
        frame = frame.f_back
    return None if frame is None else frame.f_globals.get("__name__")


@dataclass
class _Scope:
    levels: dict[logging.Logger, int] = field(default_factory=dict)
    mlflow_muted: bool = False

    def set_level(self, logger: logging.Logger, level: int) -> None:
        self.levels.setdefault(logger, logger.level)
        logger.setLevel(level)

    def third_party_loggers(self) -> None:
        """ERROR for every existing logger outside persona (placeholders have no level of their own)."""
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and not is_own(name) and logger.level != THIRD_PARTY_LEVEL:
                self.set_level(logger, THIRD_PARTY_LEVEL)

    def mute_mlflow(self) -> None:
        if "mlflow.utils.logging_utils" in sys.modules and not self.mlflow_muted:
            stream = sys.modules["mlflow.utils.logging_utils"].MLFLOW_LOGGING_STREAM
            if stream.enabled:
                stream.enabled = False
                self.mlflow_muted = True

    def restore(self) -> None:
        for logger, level in reversed(list(self.levels.items())):
            logger.setLevel(level)
        if self.mlflow_muted:
            sys.modules["mlflow.utils.logging_utils"].MLFLOW_LOGGING_STREAM.enabled = True


_scope: ContextVar[_Scope | None] = ContextVar("persona_quiet_scope", default=None)


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Run a block with third-party warnings hidden and third-party loggers at ERROR (see the module); a no-op
    with `verbose`."""
    if verbose:
        yield
        return
    scope = _Scope()
    token = _scope.set(scope)
    env_before = os.environ.get(MLFLOW_LEVEL_VAR)
    root = logging.getLogger()
    try:
        with warnings.catch_warnings():
            show = warnings.showwarning

            def showwarning(message, category, filename, lineno, file=None, line=None):
                if is_own(_issuer()):
                    show(message, category, filename, lineno, file, line)

            warnings.showwarning = showwarning
            # persona's own loggers keep the level they had (the root's, WARNING by default) when the root is raised
            inherited = root.level or logging.WARNING
            for name in OWN_PACKAGES:
                own = logging.getLogger(name)
                if own.level == logging.NOTSET:
                    scope.set_level(own, inherited)
            scope.set_level(root, THIRD_PARTY_LEVEL)
            scope.third_party_loggers()
            scope.mute_mlflow()
            os.environ[MLFLOW_LEVEL_VAR] = logging.getLevelName(THIRD_PARTY_LEVEL)
            yield
    finally:
        if env_before is None:
            os.environ.pop(MLFLOW_LEVEL_VAR, None)
        else:
            os.environ[MLFLOW_LEVEL_VAR] = env_before
        scope.restore()
        _scope.reset(token)


def settle() -> None:
    """Inside `quiet()`: quiet the loggers (and MLflow's stream) of libraries imported since it began. Outside, or
    with `verbose`, nothing."""
    scope = _scope.get()
    if scope is not None:
        scope.third_party_loggers()
        scope.mute_mlflow()
