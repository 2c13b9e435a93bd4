"""Errors the toolkit raises for bad user input.

The command line turns an :class:`OtbrError` into one line on stderr and a
non-zero exit status, without a traceback.
"""


class OtbrError(Exception):
    """A user-facing error: one clear line, no traceback."""
