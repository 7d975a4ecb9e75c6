"""Errors a user can act on, shown by the CLI as one clear message rather than a stack trace."""


class InsufficientDataError(ValueError):
    """The data cannot support what was asked (too little history, too few positives); the message says what is missing."""
