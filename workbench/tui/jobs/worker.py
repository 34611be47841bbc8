"""What the app's thread workers share: the worker groups that borrow the engine, and `WorkerJob`."""

from __future__ import annotations

from textual.app import App
from textual.message import Message
from textual.worker import get_current_worker

from workbench.tui.messages import WorkProgress

BORROWING = ("compare", "sensitivity", "agent")  # the workers that borrow the engine


class WorkerJob:
    """What a worker's body needs, made in its thread: progress reports and messages that stop once the
    worker is cancelled, and the cancel check to hand to the engine."""

    def __init__(self, app: App, kind: str):
        self.app = app
        self.kind = kind
        self.worker = get_current_worker()

    def cancelled(self) -> bool:
        """Whether the worker was cancelled (the engine's cancel check)."""
        return self.worker.is_cancelled

    def progress(self, message: str, fraction: float | None = None) -> None:
        """Show `message` and how far the work is (None: unknown) in the activity line."""
        self.post(WorkProgress(self.kind, message, fraction))

    def post(self, message: Message) -> None:
        """Post `message` to the app unless the worker was cancelled."""
        if not self.cancelled():
            self.app.post_message(message)
