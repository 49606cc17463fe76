"""perfd's ROUTER sockets: how each is set up, and reading one whole message off it.

The queues are bounded in messages (libzmq counts no bytes): in, a client sending faster than
perfd reads is slowed down (libzmq stops reading its socket), so with the per-message byte
limit this bounds what one connection's requests hold; out, a reply past the queue is
dropped, not held (a client that never reads), with room for a client's whole in-flight
window.
"""

from __future__ import annotations

from typing import Final

import zmq

RECEIVE_QUEUE: Final = 4  # complete messages queued per connection, in
SEND_QUEUE: Final = 64  # and out
HANDSHAKE_SECONDS: Final = 10  # a connection that has not finished its ZMTP/CURVE handshake


def new_router(ctx: zmq.Context[zmq.Socket[bytes]], max_frame_bytes: int) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)  # per frame: a bigger one drops the peer
    sock.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)
    sock.setsockopt(zmq.SNDHWM, SEND_QUEUE)  # past it a NOBLOCK send raises: dropped
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_SECONDS * 1000)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
    # A reply to a client that has gone raises EHOSTUNREACH: counted as dropped, not lost
    # silently.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return sock


def receive(sock: zmq.Socket[bytes]) -> list[zmq.Frame] | None:
    """Every frame of the next message, none copied (so one over the limit costs no copy),
    or None when there is none. The first carries the sender's Peer-Address, User-Id, fd."""
    try:
        parts = [sock.recv(zmq.NOBLOCK, copy=False)]
    except zmq.Again:
        return None
    while sock.getsockopt(zmq.RCVMORE):
        parts.append(sock.recv(copy=False))
    return parts


def fd_of(frame: zmq.Frame) -> int | None:
    """The fd of the connection a message came on (libzmq's ZMQ_SRCFD)."""
    try:
        fd = frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def envelope_of(parts: list[zmq.Frame]) -> list[bytes]:
    """The reply envelope: the identity, and the empty delimiter when a REQ peer sent one."""
    return [p.bytes for p in parts[: 2 if len(parts) > 1 and len(parts[1]) == 0 else 1]]


def copy_out(parts: list[zmq.Frame]) -> list[bytes]:
    """The frames' bytes, each libzmq message released once copied (``parts`` is emptied):
    a large message is never held twice over."""
    parts.reverse()
    out = []
    while parts:
        out.append(parts.pop().bytes)
    return out
