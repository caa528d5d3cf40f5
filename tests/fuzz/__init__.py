"""Fuzz targets (hypothesis): tests/fuzz/test_fuzz_guard.py and its kin."""
