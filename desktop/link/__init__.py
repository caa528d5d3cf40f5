"""The host's end of the guest link: the contract every transport keeps.

A `Link` opens authenticated streams to the guest agent: `open(op)` returns a connected
socket that has already sent its header (see `guest_engine.protocol`); the caller relays
bytes on it. One transport per module, each a `Link`:

* `desktop.link.tcp.TcpLink`: TCP to a host port QEMU user networking forwards to the
  agent (every QEMU host);
* `desktop.link.hvsock.HvsockLink`: Hyper-V sockets (Windows), which also carry the boot
  config;

and `desktop.link.channel.ControlChannel` runs the ``control`` stream over any of them
(requests, replies, pushed events, reconnecting when it drops). This module imports
none of them: they import it.

Exceptions::

    LinkError          the agent could not be reached or refused
    +-- AgentError     the agent answered a request with an error (message is its own)
"""

from __future__ import annotations

import socket
from typing import Protocol


class LinkError(Exception):
    """The guest agent could not be reached."""


class AgentError(LinkError):
    """The agent refused a request; the message is the agent's."""


class Link(Protocol):
    """Opens streams to the guest agent over one transport."""

    def open(self, op: str, arg: int | None = None, timeout: float = 5.0) -> socket.socket:
        """A stream for `op` (with its `arg`, e.g. a port), its header sent, in blocking
        mode; raises LinkError when the agent cannot be reached within `timeout`."""
        ...
