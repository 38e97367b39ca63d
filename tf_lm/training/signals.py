"""`StopOnSignal`: SIGTERM or Ctrl-C asks a training loop to stop after its current step, with a checkpoint."""

import signal
import threading


class StopOnSignal:
    """A context manager that turns SIGTERM and SIGINT into a stop request, polled by the training loop.

    The loop finishes its step, writes a checkpoint and stops, so a preempted or interrupted run loses nothing.
    A second Ctrl-C raises `KeyboardInterrupt` at once, for a user who does not want to wait for the checkpoint.
    Signals reach only the main thread, so elsewhere (a loop run from a worker thread) nothing is installed.

    Example:
    >>> with StopOnSignal() as stop:  # doctest: +SKIP
    ...     while not stop.requested():
    ...         train_one_step()
    """

    def __enter__(self):
        self.signal = None
        """The number of the first signal received, or None."""
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt
        if self.signal is None:  # the stop is reported (and exits 128 + signal) as the first signal asked it
            self.signal = signum

    def requested(self) -> bool:
        return self.signal is not None

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
