"""Drive an engine generator in a child process, as if it were local.

Why: PyTorch's CPU work for co-training (many small operations) runs 15-20% slower in a secondary thread of
a process than in its main thread on our 2-core test machine, with or without Qt (docs/benchmarks.md,
"Widgets"). A GUI must not train on its main thread, so the widgets run the engine in the main thread of a
spawned process instead and pull its events through a pipe.

`RemoteEvents(job)` is an iterator over the events of `job()` (a picklable zero-argument callable returning
an engine generator) that keeps the generator's contract: the child advances the engine one event per
`next()` (so pausing the consumer pauses training), `close()` closes the engine in the child (which saves
its checkpoint) and waits for it, and an exception in the child is raised again in the consumer.
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_NEXT, _CLOSE = "next", "close"


def _serve(job: Callable[[], Iterator], conn) -> None:
    """Child process: answer each request with ("event", e), ("end", None) or ("error", exc)."""
    events = None
    try:
        while True:
            request = conn.recv()
            if request == _CLOSE:
                break
            try:
                if events is None:
                    events = job()
                conn.send(("event", next(events)))
            except StopIteration:
                conn.send(("end", None))
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the consumer
                conn.send(("error", _picklable(exc)))
    except (EOFError, KeyboardInterrupt):  # the consumer is gone: still leave a checkpoint behind
        pass
    finally:
        if events is not None:
            events.close()
        try:
            conn.send(("closed", None))
        except (OSError, ValueError):
            pass
        conn.close()


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


@contextmanager
def _main_module_hidden():
    """Start children that do not import the parent's `__main__`.

    A spawned child normally re-imports the parent's main script; a napari user's script without an
    `if __name__ == "__main__":` guard would then open a second viewer in the child and never train. The job
    comes from an importable module, so the child needs nothing from `__main__`.
    """
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)


class RemoteEvents:
    """Iterator over the events of `job()` computed in a spawned child process (see module doc)."""

    def __init__(self, job: Callable[[], Iterator]) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds Qt and PyTorch threads
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(job, child), daemon=True, name="rrl-medsam-engine")
        with _main_module_hidden():
            self._process.start()
        child.close()
        self._done = False

    def __iter__(self) -> RemoteEvents:
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        try:
            self._conn.send(_NEXT)
            kind, payload = self._conn.recv()
        except (EOFError, OSError):  # the child died (killed, out of memory, ...)
            self._done = True
            self._process.join()
            raise RuntimeError(
                f"the training process ended unexpectedly (exit code {self._process.exitcode}); "
                "the last checkpoint it saved can be resumed"
            ) from None
        if kind == "event":
            return payload
        self.close()
        if kind == "error":
            raise payload
        raise StopIteration

    def close(self) -> None:
        """Close the engine in the child (it saves its checkpoint) and wait for the child to exit."""
        if self._done and not self._process.is_alive():
            return
        self._done = True
        try:
            self._conn.send(_CLOSE)
            while self._conn.recv()[0] != "closed":
                pass
        except (EOFError, OSError):
            pass
        self._process.join()
        self._conn.close()

    def __del__(self) -> None:
        if getattr(self, "_process", None) is not None and self._process.is_alive():
            self._process.terminate()
