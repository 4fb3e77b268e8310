"""Hypothesis property tests: hostile input against real processes."""
