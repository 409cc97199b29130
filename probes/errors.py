"""The one exception type users see.

A :class:`ProbesError` carries a single line that names the file, field or step at fault and says
what is wrong. The CLI prints it as ``probes: error: <message>`` and exits with status 2; anything
else escaping is a bug in the toolkit and keeps its traceback.
"""

import contextlib


class ProbesError(Exception):
    """A user-facing error whose message is one line naming what is wrong and where."""

    def __init__(self, message: str):
        # One line, and nothing a terminal would interpret (names may hold escape sequences).
        text = " ".join(str(message).split())
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


class UnsupportedCondition(ProbesError):
    """The model cannot be conditioned on the requested taxonomy node (e.g. an internal node of a
    model trained on leaf labels only)."""


def quote_library_error(err: BaseException, limit: int = 300) -> str:
    """A library's error message for quoting inside a one-line :class:`ProbesError`.

    Libraries hard-wrap long messages, so the lines are joined rather than the first one kept; a
    message longer than ``limit`` characters is cut at a word boundary and marked with ``...``,
    never mid-word. An empty message gives the exception's type name.
    """
    text = " ".join(str(err).split())
    if not text:
        return type(err).__name__
    if len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0] if " " in text[:limit + 1] else text[:limit]
    return cut.rstrip(" ,;:") + " ..."


@contextlib.contextmanager
def os_errors_named():
    """Failures of the operating system (a read-only folder, a name too long, a link that loops, a
    full disk) as one :class:`ProbesError` line naming the path, at the API's edge: what a caller
    of ``probes.run`` or ``probes.load`` gets, as the CLI prints it."""
    try:
        yield
    except ProbesError:
        raise
    except OSError as err:
        where = err.filename if getattr(err, "filename", None) else None
        text = err.strerror or quote_library_error(err)
        raise ProbesError(f"{where}: {text}" if where is not None else text) from None
