"""User-facing errors.

Everything a user can get wrong (a missing or corrupt file, an unsupported op, a bad shape)
raises an `IntqError`; the CLI prints its message as one line on stderr and exits with
code 2. Any other exception is a bug in intq and keeps its traceback.
"""


class IntqError(Exception):
    """An error caused by the user's input; its message is the whole report."""


class UnsupportedOpsError(IntqError):
    """The model uses ops intq cannot compile; lists every one with its node names."""

    def __init__(self, unsupported: dict[str, list[str]]):
        self.unsupported = dict(sorted(unsupported.items()))
        parts = [f"{op} ({', '.join(names)})" for op, names in self.unsupported.items()]
        super().__init__(f"unsupported ops: {'; '.join(parts)}")
