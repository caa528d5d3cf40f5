"""Unit tests of the tray app (desktop/tray/)."""
