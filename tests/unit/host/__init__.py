"""Unit tests of the host side (desktop/, minus the tray; benchmarks/)."""
