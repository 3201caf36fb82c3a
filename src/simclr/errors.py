"""The one exception type that means "the user asked for something we cannot do"."""

from __future__ import annotations

import importlib
from types import ModuleType

DISTRIBUTION = "simclr-kit"
"""The name this package is installed under (``pip install simclr-kit``); it imports as ``simclr``
(the distribution ``simclr`` on the public index is an unrelated project)."""


class UserError(Exception):
    """A mistake in the command line, config or data: reported as one line, exit code 2."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail with the ``pip install`` that brings it.

    Every import of a package outside the core dependencies goes through here, at its point of
    use, so that ``import simclr`` and the image path never need it.

    Args:
        module: What to import (``"soundfile"``, ``"pyarrow.parquet"``).
        extra: The extra of :data:`DISTRIBUTION` that installs it (``"audio"``).
        purpose: What it is needed for, read after "X is needed" (``"to read audio files"``).

    Returns:
        The imported module. Where its static types matter (tokenizers, pandas), call this on
        its own line and import as usual after it.

    Raises:
        UserError: it cannot be imported; one line ending in
            ``pip install "simclr-kit[<extra>]"``.
    """
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as err:  # OSError: a package whose shared library is missing
        package = module.partition(".")[0]
        name = getattr(err, "name", None) or ""
        missing = isinstance(err, ModuleNotFoundError) and name.partition(".")[0] == package
        state = "is not installed" if missing else f"cannot be imported ({first_line(err)})"
        raise UserError(
            f'{package} is needed {purpose} but {state}: pip install "{DISTRIBUTION}[{extra}]"'
        ) from None
