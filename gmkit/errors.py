"""The one exception type users see as a single line (the CLI prints it without a traceback)."""


class GmkitError(Exception):
    """A problem with the user's input or environment, stated so they can fix it."""
