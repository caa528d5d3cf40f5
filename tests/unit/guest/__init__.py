"""Unit tests of the agent inside the VM (guest_engine/)."""
