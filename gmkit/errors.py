"""The exceptions users see as a single line (the CLI prints them without a traceback)."""


class GmkitError(Exception):
    """A problem with the user's input or environment, stated so they can fix it."""


class OptionError(GmkitError):
    """A bad value for one named setting (``steps``, ``guidance``, ``class_label``, ...).

    Model and library code name the *setting*, never a command-line flag; the CLI maps the setting to
    its flag (``steps`` -> ``--steps``, ``class_label`` -> ``--class``) when it prints the message, and
    the Python API prints it as is. ``message`` reads on from the setting's name:
    ``OptionError("steps", "must be >= 1, got 0")`` -> "steps must be >= 1, got 0".
    """

    def __init__(self, setting: str, message: str):
        self.setting, self.message = setting, message
        super().__init__(f"{setting} {message}")
