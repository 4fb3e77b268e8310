"""Tests of pure code, in process: no servers started."""
