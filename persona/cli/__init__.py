"""The top floor: what a person or a scheduler runs. The `persona` command (`commands`), its printed reports
(`render`), the demo, the nightly schedule, the erasure of a person (`forget`), campaigns (`campaign`) and the web console (`console`). Nothing
below imports from here.
"""

from persona.cli.campaign import campaign_app
from persona.cli.commands import app, commented_section
from persona.cli.console import run_console

app.add_typer(campaign_app, name="campaign")
app.command("console")(run_console)

__all__ = ["app", "commented_section"]
