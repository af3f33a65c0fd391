"""The base of every error a user can fix: reported as one line, the message naming the problem and the fix."""


class PDSpaceError(Exception):
    """An error a user can fix: reported as one line (its message names the problem and the fix)."""
