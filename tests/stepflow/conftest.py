"""Fixtures of the Stepflow tests: the pinned Stepflow venv, made once per session."""

from __future__ import annotations

import pytest

from tests.stepflow_venv import StepflowVenv, stepflow_venv


@pytest.fixture(scope="session")
def stepflow() -> StepflowVenv:
    return stepflow_venv()
