"""The one exception type users see.

A :class:`ProbesError` carries a single line that names the file, field or step at fault and says
what is wrong. The CLI prints it as ``probes: error: <message>`` and exits with status 2; anything
else escaping is a bug in the toolkit and keeps its traceback.
"""


class ProbesError(Exception):
    """A user-facing error whose message is one line naming what is wrong and where."""

    def __init__(self, message: str):
        # One line, and nothing a terminal would interpret (names may hold escape sequences).
        text = " ".join(str(message).split())
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


class UnsupportedCondition(ProbesError):
    """The model cannot be conditioned on the requested taxonomy node (e.g. an internal node of a
    model trained on leaf labels only)."""
