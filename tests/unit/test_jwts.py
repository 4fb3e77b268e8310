"""The JWT verifier's memory of verified tokens (security/jwts.py)."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from blobstore.security.jwts import InvalidJwt, JwtSettings, JwtVerifier

SECRET = "unit-test-secret-of-more-than-32-bytes-0123"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_verified_token_is_remembered_until_its_exp(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    clock = Clock()
    verifier = JwtVerifier(
        JwtSettings(secret_file=str(secret), audience="a", leeway_seconds=5), clock
    )
    exp = int(clock.now) + 60
    token = jwt.encode({"aud": "a", "exp": exp, "sub": "s", "scope": "read"}, SECRET, "HS256")
    first = verifier.verify(token)
    assert first.scopes == frozenset({"read"}) and first.expires == exp
    assert verifier.verify(token) is first  # from memory
    clock.now = exp + 6  # past exp and the leeway
    with pytest.raises(InvalidJwt, match="expired"):
        verifier.verify(token)
    # A key reload forgets what was verified with the old key.
    clock.now = exp - 30
    verifier.verify(token)
    secret.write_text("another-secret-of-more-than-32-bytes-98765")
    assert verifier.reload()
    with pytest.raises(InvalidJwt, match="signature"):
        verifier.verify(token)
