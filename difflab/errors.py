"""User errors: one clear line naming the problem and the fix, exit code 2, no traceback."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for (bad file, bad option, wrong checkpoint).

    The CLI prints `difflab: error: <message>` on stderr and exits with code 2.
    Raise it *before* anything is written, so nothing on disk is lost."""

    exit_code = 2
