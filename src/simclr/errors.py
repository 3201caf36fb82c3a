"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A mistake in the command line, config or data: reported as one line, exit code 2."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
