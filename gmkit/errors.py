"""The exceptions users see as a single line (the CLI prints them without a traceback)."""

from __future__ import annotations

import re
from typing import Callable

_NAMED = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class GmkitError(Exception):
    """A problem with the user's input or environment, stated so they can fix it."""


class OptionError(GmkitError):
    """A bad value for one named setting (``steps``, ``guidance``, ``class_label``, ...).

    Model and library code name the *setting*, never a command-line flag; the CLI maps the setting to
    its flag (``steps`` -> ``--steps``, ``class_label`` -> ``--class``) when it prints the message, and
    the Python API prints it as is. ``message`` reads on from the setting's name:
    ``OptionError("steps", "must be >= 1, got 0")`` -> "steps must be >= 1, got 0". A message that
    names settings elsewhere writes them in braces, ``OptionError("mask", "{mask} needs {image}")``,
    and then is not prefixed.
    """

    def __init__(self, setting: str, message: str):
        self.setting, self.message = setting, message
        super().__init__(self.render(lambda name: name))

    def render(self, name_of: Callable[[str], str]) -> str:
        """The message with every setting written by ``name_of`` (the CLI passes setting -> flag)."""
        text = self.message if _NAMED.search(self.message) else f"{{{self.setting}}} {self.message}"
        return _NAMED.sub(lambda m: name_of(m.group(1)), text)


class StopTraining(GmkitError):
    """A family's signal that training cannot usefully go on (e.g. a GAN's mode collapse).

    The training loop stops at once, keeps the last checkpoint (the weights that led here are not
    saved over it), logs the reason in log.jsonl and re-raises, so the command exits with the message.
    """
