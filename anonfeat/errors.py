"""Errors that reach the user as one clear line instead of a traceback."""


class AnonfeatError(Exception):
    """A problem with the user's input: the CLI prints it on one line and exits 2.

    The message should name the file or flag at fault and say how to fix it.
    """


class VideoError(AnonfeatError):
    """One video could not be used; extraction records it and moves on."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when empty), at most 300 characters: what a
    one-line error report or a failure record quotes of a library's multi-line message."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
