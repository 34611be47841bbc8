"""What the headless commands write: the export, the session and the files beside it, all or none."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

from workbench.infra.errors import WorkbenchError


def check_outputs(args) -> None:
    """Refuse output options that cannot go together, before any work."""
    if args.save_masks and not args.save_session:
        raise WorkbenchError("--save-masks", "needs --save-session FILE (the masks are written beside it)")


@contextlib.contextmanager
def interrupts_held():
    """Hold Ctrl-C (SIGINT) until the block ends, so that writes it has begun finish; yields a list that
    is non-empty when one came."""
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)


def write_outputs(args, engine, pruned, attach=None) -> str | None:
    """Write the export, then the session (and its masks; `attach(session)` writes any other file beside it
    and returns its path): all of them, or none when a write fails or Ctrl-C comes during the export. Ctrl-C
    during the (quick) session write is held until it is done."""
    from workbench.engine.masks import mask_file_for
    from workbench.domain.session import attach_mask_file, save_session, session_from_engine

    session = session_from_engine(engine, probes=pruned, device=args.device, dtype=args.dtype) if args.save_session else None
    masks = mask_file_for(args.save_session) if args.save_masks else None
    masks_existed = masks is not None and masks.exists()
    export = Path(args.export).expanduser().resolve() if args.export else None
    export_was_empty_dir = export is not None and export.is_dir() and not any(export.iterdir())
    export_is_ours = export is not None and (export_was_empty_dir or not os.path.lexists(export))
    attached = None
    try:
        exported = str(engine.export(export, notice=lambda note: print(f"workbench: {note}", file=sys.stderr))) if export is not None else None
        if session is not None:
            with interrupts_held() as held:
                if masks is not None:
                    attach_mask_file(session, engine, args.save_session)
                if attach is not None:
                    attached = attach(session)
                save_session(session, args.save_session)
            if held:
                print("workbench: Ctrl-C came while the session was being written; every output was written in full",
                      file=sys.stderr)
    except BaseException:
        if masks is not None and not masks_existed:
            masks.unlink(missing_ok=True)
        if attached is not None:
            attached.unlink(missing_ok=True)
        if export_is_ours:
            shutil.rmtree(export, ignore_errors=True)
            if export_was_empty_dir:
                export.mkdir(exist_ok=True)
        raise
    return exported
