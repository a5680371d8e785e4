"""Test doubles shared by the test suite and the benchmarks (no network, no keys)."""
