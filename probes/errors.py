"""The one exception type users see.

A :class:`ProbesError` carries a single line that names the file, field or step at fault and says
what is wrong. The CLI prints it as ``probes: error: <message>`` and exits with status 2; anything
else escaping is a bug in the toolkit and keeps its traceback.
"""


class ProbesError(Exception):
    """A user-facing error whose message is one line naming what is wrong and where."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class UnsupportedCondition(ProbesError):
    """The model cannot be conditioned on the requested taxonomy node (e.g. an internal node of a
    model trained on leaf labels only)."""
