"""The one exception type that reaches users.

Everything the engine can diagnose (bad input, a broken model bundle, no GPU, out of memory, cancel)
is raised as a :class:`DSSMError` with a message that says what is wrong and what to do. The command
line prints it as one line and exits non-zero; the Slicer module shows it in a message box.
"""


class DSSMError(Exception):
    """A problem the user can act on. ``str(error)`` is the whole message."""


class Cancelled(DSSMError):
    """The user cancelled the work. Nothing was written."""

    def __init__(self, message: str = "Cancelled by the user; nothing was written.") -> None:
        super().__init__(message)
