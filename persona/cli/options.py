"""What every command shares: the workspace and --json options, the error handling of known failures, printing a
result as JSON or for a person. A module of its own so that commands in other modules (campaign, console) and the
demo use them without importing the command table."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from persona.cli.render import err
from persona.config import ConfigError
from persona.engine import EngineUnavailable
from persona.errors import InsufficientDataError
from persona.workspace import SecretError

WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", help="workspace folder holding persona.yaml")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON (for automation)")]


@contextmanager
def errors() -> Iterator[None]:
    """Known failures print what is wrong (a line per problem) and exit 2; no stack trace for bad input."""
    from features.integration.ingest import SourceFileError
    from persona.quiet import settle

    settle()  # the command's libraries are imported by now: their loggers get the command's quiet levels
    try:
        yield
    except (ConfigError, SourceFileError, SecretError, InsufficientDataError, EngineUnavailable, FileNotFoundError,
            FileExistsError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def emit(data: dict, as_json: bool, render: Callable[[dict], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
    else:
        render(data)
