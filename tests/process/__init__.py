"""Tests against real server processes on real ports."""
