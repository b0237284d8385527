"""The one exception type for problems with what the user asked for."""


class UserError(Exception):
    """Bad input: the CLI prints it as one line (problem and fix) and exits with status 2.

    Raise it before anything is written, so that a rejected run leaves no trace.
    """
