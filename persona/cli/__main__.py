"""`python -m persona.cli ...` runs the `persona` command."""

from persona.cli.commands import app

app()
