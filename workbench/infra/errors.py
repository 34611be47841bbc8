"""One error type for everything a user can get wrong; the CLI prints it as one line."""


class WorkbenchError(Exception):
    """A user-facing error: `where` names the file, key, layer or option, `what` the reason."""

    def __init__(self, where: str, what: str):
        super().__init__(f"{where}: {what}")
        self.where = where
        self.what = what


class Cancelled(Exception):
    """Raised inside long operations when the caller's cancel check returns True."""


def out_of_memory(error: BaseException) -> str | None:
    """For an out-of-memory error (host MemoryError, or a device's "out of memory" RuntimeError), a one-line
    hint naming where memory ran out; None for any other error."""
    if isinstance(error, MemoryError):
        return "out of memory (CPU): try fewer calibration samples, a shorter sequence length or a smaller model"
    if isinstance(error, RuntimeError) and "out of memory" in str(error).lower():
        return "out of memory on the device: try fewer calibration samples, a shorter sequence length, or the CPU"
    return None
