"""One error type for everything a user can get wrong; the CLI prints it as one line."""


class WorkbenchError(Exception):
    """A user-facing error: `where` names the file, key, layer or option, `what` the reason."""

    def __init__(self, where: str, what: str):
        super().__init__(f"{where}: {what}")
        self.where = where
        self.what = what


class Cancelled(Exception):
    """Raised inside long operations when the caller's cancel check returns True."""
