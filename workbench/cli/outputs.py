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


@contextlib.contextmanager
def side_files_kept(paths: list[Path]):
    """The files beside a session that a write may replace (masks, trained tensors, calibration ids): those
    that exist are moved aside first; when the block fails every one is as it was (moved back, or removed
    when it is new), and when it succeeds the old ones are deleted."""
    moved = {}
    for path in paths:
        if path.exists():
            moved[path] = path.with_name(path.name + ".previous")
            os.replace(path, moved[path])
    try:
        yield
    except BaseException:
        for path in paths:
            if path in moved:
                os.replace(moved[path], path)
            else:
                path.unlink(missing_ok=True)
        raise
    for old in moved.values():
        old.unlink(missing_ok=True)


def write_outputs(args, engine, pruned, attach=None) -> str | None:
    """Write the export, then the session (and its masks; `attach(session)` writes any other file beside it):
    all of them, or none when a write fails or Ctrl-C comes during the export (the files beside the session
    are then as they were). Ctrl-C during the (quick) session write is held until it is done."""
    from workbench.engine.masks import mask_file_for
    from workbench.domain.session import attach_mask_file, save_session, session_from_engine
    from workbench.infra.tensorfile import beside

    session = session_from_engine(engine, probes=pruned, device=args.device, dtype=args.dtype) if args.save_session else None
    side = []  # the files beside the session this write (re)writes
    if session is not None:
        ids = session.calibration_ids
        side = ([mask_file_for(args.save_session)] * bool(args.save_masks) + [beside(args.save_session, "heal")] * (attach is not None)
                + [beside(args.save_session, "calib")] * (ids is not None and ids.ids is not None))
    export = Path(args.export).expanduser().resolve() if args.export else None
    export_was_empty_dir = export is not None and export.is_dir() and not any(export.iterdir())
    export_is_ours = export is not None and (export_was_empty_dir or not os.path.lexists(export))
    try:
        exported = str(engine.export(export, notice=lambda note: print(f"workbench: {note}", file=sys.stderr))) if export is not None else None
        if session is not None:
            with interrupts_held() as held, side_files_kept(side):
                if args.save_masks:
                    attach_mask_file(session, engine, args.save_session)
                if attach is not None:
                    attach(session)
                save_session(session, args.save_session)
            if held:
                print("workbench: Ctrl-C came while the session was being written; every output was written in full",
                      file=sys.stderr)
    except BaseException:
        if export_is_ours:
            shutil.rmtree(export, ignore_errors=True)
            if export_was_empty_dir:
                export.mkdir(exist_ok=True)
        raise
    return exported
