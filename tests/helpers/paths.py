"""Paths the tests compute once: the repository root and the recorded fixtures."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository root (the folder holding desktop/, guest_engine/ and tests/)."""

FIXTURES = REPO / "tests" / "unit" / "fixtures"
"""Recorded data for the unit tests (see its README.md)."""
