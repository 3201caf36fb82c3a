"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A mistake in the command line, config or data: reported as one line, exit code 2."""
