"""`persona console`: the marketer's web console over a workspace (serving/console), served by uvicorn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from persona.cli.options import WorkspaceOpt
from persona.cli.options import errors as _errors
from persona.cli.render import console as out
from persona.workspace import Workspace

DEFAULT_PORT = 8600


def address(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> str:
    return f"http://{host}:{port}/"


def run_console(
    workspace: WorkspaceOpt = Path("."),
    port: Annotated[int, typer.Option(help="port to listen on")] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
) -> None:
    """Serve the web console (overview, Profile 360, tag catalog, segment builder, models, campaigns)."""
    import uvicorn

    from serving.console.app import create_app

    # MLflow draws a progress bar on stderr for every artifact the Models pages read the first time: a server's log
    # is no place for it (set here, at the entry point: library code leaves the environment alone)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with _errors():
        ws = Workspace.open(workspace)
        ws.require_current("integrated", "run `persona integrate` (or `persona demo`) first")
        app = create_app(ws, warm=True)
    key_env = ws.config().serving.api_key_env
    needs_key = f"; the key in ${key_env} is required" if os.environ.get(key_env) else ""
    out.print(f"persona console on {address(host, port)} for {ws.root} (Ctrl-C stops it){needs_key}",
              highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
