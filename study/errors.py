"""The one exception type the CLI turns into a clean message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: the message names the input and says how to fix it."""
