"""Benchmark suites behind `kommune bench`. Measured, never asserted in unit tests."""
