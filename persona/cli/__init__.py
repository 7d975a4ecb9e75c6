"""The top floor: what a person or a scheduler runs. The `persona` command (`commands`), its printed reports
(`render`), the demo, the nightly schedule and the erasure of a person (`forget`). Nothing below imports from here.
"""

from persona.cli.commands import app, commented_section

__all__ = ["app", "commented_section"]
