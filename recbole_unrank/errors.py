"""The one exception type a user sees: a message that says what is wrong and what to do."""

__all__ = ["UnrankError"]


class UnrankError(Exception):
    """Bad input or a refused result. The command line prints it as one line and exits 2."""
