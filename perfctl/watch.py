"""`perfctl stats --watch`: redraw the stats until q or Ctrl-C.

On a terminal each screen replaces the last, and its headline shows the redraw interval beside
perfd's sample interval. When stdin is a terminal too, it is put in cbreak mode (keys arrive
one by one, unechoed) for the watch and restored after: ``q`` quits. Otherwise screens follow
each other a blank line apart. With ``--json`` each new sample is one JSON line, and a sample
already printed (the same ``sampled_at``) is not printed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

CLEAR = "\033[H\033[2J"  # cursor home, clear screen
QUIT_KEYS = frozenset("qQ")


class Keys:
    """Keys pressed on a terminal stdin, read without blocking; nothing when not a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self._fd: int | None = None
        try:
            if stream.isatty():
                self._fd = stream.fileno()
        except (AttributeError, ValueError, OSError):  # closed, or a stream with no fd
            self._fd = None

    @contextlib.contextmanager
    def cbreak(self) -> Iterator[Keys]:
        """Keys arrive one at a time, unechoed, while inside; the terminal is restored after."""
        if self._fd is None:
            yield self
            return
        import termios
        import tty

        try:
            saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        except termios.error:  # not a real terminal after all
            self._fd = None
            yield self
            return
        try:
            yield self
        finally:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)

    def wait(self, seconds: float) -> str:
        """Wait up to ``seconds``; the keys pressed meanwhile ("" when none, or no terminal)."""
        if self._fd is None:
            time.sleep(max(seconds, 0.0))
            return ""
        import select

        ready, _, _ = select.select([self._fd], [], [], max(seconds, 0.0))
        if not ready:
            return ""
        data = os.read(self._fd, 64)
        if not data:  # the terminal went away: no more keys, just wait
            self._fd = None
        return data.decode("utf-8", "replace")


def run(
    fetch: Callable[[], dict[str, Any]],
    interval: float,
    as_json: bool,
    render: Callable[[dict[str, Any]], str],
    *,
    schema: int,
    keys: Keys | None = None,
) -> int:
    """Print ``fetch()`` every ``interval`` seconds until q or Ctrl-C (exit 0).

    PerfctlError propagates: the daemon stopped answering, and main() reports it with the
    usual exit code.
    """
    import signal  # only here: the one-shot commands never need it

    # Ctrl-C ends the watch even when started with SIGINT ignored (a script's background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    keys = keys or Keys(sys.stdin)
    tty = sys.stdout.isatty()
    due = time.monotonic()
    first, last = True, None
    try:
        with keys.cbreak():
            while True:
                result = fetch()
                if as_json:
                    stamp = result.get("sampled_at_unix", result.get("sampled_at"))
                    if stamp is None or stamp != last:
                        print(json.dumps({"schema": schema, **result}), flush=True)
                    last = stamp
                else:
                    screen = render(result)
                    if tty:
                        screen = CLEAR + screen
                    elif not first:
                        screen = "\n" + screen
                    print(screen, flush=True)
                first = False
                due += interval
                now = time.monotonic()
                due = max(due, now)  # after a slow reply or a suspended terminal: no catching up
                while (left := due - time.monotonic()) > 0:
                    if QUIT_KEYS & set(keys.wait(left)):
                        return 0
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # the reader went away (perfctl stats --watch | head)
        quiet_stdout()
        return 0


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of a closed pipe is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
