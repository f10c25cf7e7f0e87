"""The error type for mistakes in a user's input, shared by the tasks, the commands and the CLI.

A `UserError` names the input and what to do about it; the command line prints it as one line
and exits with code 2, never a traceback.
"""


class UserError(ValueError):
    """An error in the user's input: printed as one line, exit code 2."""
