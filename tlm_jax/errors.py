"""User-facing errors: one line that names the cause and the fix.

Every error a user can cause (bad path, malformed file, config that does not fit
the mesh, vocabulary mismatch, corrupt checkpoint, ...) is raised as a
:class:`TLMError`. The CLI prints ``error: <cause> (fix: <fix>)`` and exits with
status 2 instead of showing a traceback (3 for a run stopped by a non-finite loss);
``--debug`` shows the traceback. Any other exception is an internal error: one line,
exit status 1.
"""

from __future__ import annotations


class TLMError(Exception):
    """An error caused by input the user controls, carrying the fix.

    Args:
        cause: what is wrong, in one sentence.
        fix: what the user should do about it.
    """

    #: The ``tlm`` command's exit status for this error.
    exit_code: int = 2

    def __init__(self, cause: str, fix: str = "") -> None:
        self.cause = cause
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The message as a single line: ``cause (fix: ...)``."""
        text = " ".join(self.cause.split())
        if self.fix:
            text += f" (fix: {' '.join(self.fix.split())})"
        return text


class NonFiniteError(TLMError):
    """Training produced a non-finite loss or gradient norm; the run stopped (exit status 3)."""

    exit_code = 3


def require(condition: bool, cause: str, fix: str = "") -> None:
    """Raise :class:`TLMError` with ``cause``/``fix`` unless ``condition`` holds."""
    if not condition:
        raise TLMError(cause, fix)
