"""Cove's own file server: host folders to the VM over 9P2000.L on any byte stream
(`server`, on the message formats and errno numbers of `wire`)."""

from desktop.services.ninep.server import ShareServer, serve_in_thread

__all__ = ["ShareServer", "serve_in_thread"]
