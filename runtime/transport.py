"""ZeroMQ endpoints: one PULL socket to receive typed messages, PUSH sockets to send them.

Addresses come from the cluster file or flags (tcp://host:port, ipc://path); nothing is hard-coded.
A malformed frame is logged and dropped; the endpoint keeps running. Sends never block: a peer that
is gone fills its queue up to the high-water mark and further sends return False.
"""

from __future__ import annotations

import logging
from typing import Any

from .messages import FrameError, Message, decode, encode

log = logging.getLogger("helix.transport")
SEND_HWM = 1000


class Endpoint:
    def __init__(self, bind: str) -> None:
        import zmq

        self._zmq = zmq
        self.context = zmq.Context()
        self.pull = self.context.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        if bind.endswith(":0") and bind.startswith("tcp://"):
            port = self.pull.bind_to_random_port(bind.rsplit(":", 1)[0])
            bind = f"{bind.rsplit(':', 1)[0]}:{port}"
        else:
            self.pull.bind(bind)
        self.address = bind
        self.push: dict[str, Any] = {}
        self.num_rejected = 0

    def send(self, address: str, message: Message) -> bool:
        socket = self.push.get(address)
        if socket is None:
            socket = self.context.socket(self._zmq.PUSH)
            socket.setsockopt(self._zmq.LINGER, 0)
            socket.setsockopt(self._zmq.SNDHWM, SEND_HWM)
            socket.connect(address)
            self.push[address] = socket
        try:
            socket.send_multipart(encode(message), flags=self._zmq.NOBLOCK, copy=False)
            return True
        except self._zmq.Again:
            log.warning("send to %s dropped: peer queue full or gone", address)
            return False

    def recv(self, timeout_s: float) -> Message | None:
        """The next well-formed message, or None after `timeout_s` (bad frames are skipped)."""
        if not self.pull.poll(int(timeout_s * 1000)):
            return None
        while True:
            frames = self.pull.recv_multipart(copy=True)
            try:
                return decode(frames)
            except FrameError as exc:
                self.num_rejected += 1
                log.warning("rejected a frame on %s: %s", self.address, exc)
            if not self.pull.poll(0):
                return None

    def close(self) -> None:
        for socket in self.push.values():
            socket.close(0)
        self.pull.close(0)
        self.context.term()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
