"""The agent inside Cove's VM (standard library only)."""

__version__ = "0.1.0"
