"""The README configuration table lists every server setting: flag, variable, default."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from blobstore.service.config import ServerConfig, env_name

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_with_its_default() -> None:
    text = README.read_text()
    defaults = ServerConfig()
    for field in fields(ServerConfig):
        flag = "--" + field.name.replace("_", "-")
        row = re.search(rf"^\| `{flag}` \| `{env_name(field.name)}` \| `([^`]*)`", text, re.M)
        assert row, f"README configuration table has no row for {flag}"
        assert row.group(1) == str(getattr(defaults, field.name)), f"stale default for {flag}"
