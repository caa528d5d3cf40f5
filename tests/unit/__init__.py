"""Unit tests: no VM; mirrors the packages (host, guest, tray, image)."""
