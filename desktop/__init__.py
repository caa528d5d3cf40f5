"""Cove on the host: the backend that owns the VM, its drivers, the guest link, the
engine-socket forwarder, the `cove` CLI and the tray app."""

__version__ = "0.1.0"
