"""A bare pyzmq ROUTER echo server, the round-trip benchmark's baseline.

    python -m bench.echo ipc:///tmp/dir/echo.sock

Binds, prints ``ready``, then sends every message back with the same frames (identity,
delimiter, body) until it is killed (SIGTERM's default action).
"""

from __future__ import annotations

import sys

import zmq


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.echo ENDPOINT", file=sys.stderr)
        return 2
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(args[0])
    print("ready", flush=True)
    while True:
        sock.send_multipart(sock.recv_multipart())


if __name__ == "__main__":
    sys.exit(main())
