"""Errors that reach the user as one clear line instead of a traceback."""


class AnonfeatError(Exception):
    """A problem with the user's input: the CLI prints it on one line and exits 2.

    The message should name the file or flag at fault and say how to fix it.
    """


class VideoError(AnonfeatError):
    """One video could not be used; extraction records it and moves on."""
