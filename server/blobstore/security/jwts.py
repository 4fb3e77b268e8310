"""JWT bearer tokens (PyJWT): which keys and algorithms are trusted, and what a token grants.

Exactly one key source is configured:

* `--jwt-secret-file`: a shared secret (HS256), at least 32 bytes; a trailing newline
  is not part of it.
* `--jwt-public-key`: a PEM public key; RS256 for an RSA key, ES256 for an EC P-256 key.
* `--jwt-jwks-file`: a JWKS document (JSON, `{"keys": [...]}`) of RSA and EC P-256
  public keys; a token's `kid` header picks the key (a set of one key needs none).
  With a secret or a PEM key (one key), a token's `kid` is not looked at.

The accepted algorithm list is fixed by the key's type, never read from the token:
`alg: none` and the HS/RS confusion (a token signed HS256 with the RSA public key as
its secret) fail because HS256 is not accepted for a public key. `exp` is required;
`exp`, `nbf` and `iat` are checked with `--jwt-leeway-seconds` of clock skew; `aud`
must contain `--jwt-audience`; `iss` must equal `--jwt-issuer` when it is set.
Scopes come from the `scope` claim (space-separated, RFC 8693) or `scopes` (a list
or a space-separated string); names that are not ours are ignored. The principal is
named after `sub`. A verified token is remembered until its `exp` (plus the leeway;
at most CACHE_ENTRIES tokens, forgotten at a key reload), so a client that sends the same
JWT on every call pays the signature check (about 50 µs for RS256) once.

reload() (SIGHUP) reads the key file again; a file that does not load keeps the keys
in force. A refusal's message says what failed (expired, audience...), never the token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from blobstore.security.tokens import SCOPES, AuthConfigError

log = logging.getLogger("blobstore.security")

MIN_SECRET_BYTES = 32
# Verified tokens remembered (until their exp) so a repeated JWT is checked once.
CACHE_ENTRIES = 4096
_ASYMMETRIC = ("RS256", "ES256")


@dataclass(frozen=True)
class JwtSettings:
    secret_file: str = ""
    public_key: str = ""
    jwks_file: str = ""
    issuer: str = ""
    audience: str = ""
    leeway_seconds: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.secret_file or self.public_key or self.jwks_file)


@dataclass(frozen=True)
class JwtClaims:
    """What a verified token says: its subject and the scopes it grants."""

    subject: str
    scopes: frozenset[str]
    expires: float = 0.0  # the `exp` claim (seconds since the epoch)


class InvalidJwt(Exception):
    """The token is not acceptable; the message says why (never the token)."""


@dataclass(frozen=True)
class _Keys:
    """One loading of the key file: the key for a `kid` (None: the only key) and its algorithms."""

    by_kid: dict[str | None, tuple[Any, list[str]]]
    ignore_kid: bool = False  # one configured key (secret or PEM): a token's kid is not ours


class JwtVerifier:
    """Verifies JWTs against the configured key source; reloadable."""

    def __init__(self, settings: JwtSettings, clock: Callable[[], float] = time.time) -> None:
        sources = [s for s in (settings.secret_file, settings.public_key, settings.jwks_file) if s]
        if len(sources) != 1:
            raise AuthConfigError(
                "give one of --jwt-secret-file, --jwt-public-key, --jwt-jwks-file"
            )
        if not settings.audience:
            raise AuthConfigError(
                "--jwt-audience is required with JWTs: a token issued for another service "
                "must not be accepted here"
            )
        self.settings = settings
        self._options: Any = {"require": ["exp"]}
        self._clock = clock
        self._verified: dict[str, tuple[JwtClaims, float]] = {}
        self._keys = self._load()

    def describe(self) -> str:
        s = self.settings
        source = "HS256 secret" if s.secret_file else "public key" if s.public_key else "JWKS"
        return (
            f"JWT ({source}, audience {s.audience!r}{f', issuer {s.issuer!r}' if s.issuer else ''})"
        )

    def _load(self) -> _Keys:
        s = self.settings
        path = Path(s.secret_file or s.public_key or s.jwks_file)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AuthConfigError(f"cannot read the JWT key file {path}: {exc.strerror}") from None
        if s.secret_file:
            secret = data.removesuffix(b"\n").removesuffix(b"\r")
            if len(secret) < MIN_SECRET_BYTES:
                raise AuthConfigError(
                    f"--jwt-secret-file: the secret has {len(secret)} bytes; HS256 needs at "
                    f"least {MIN_SECRET_BYTES} (e.g. openssl rand -hex 32)"
                )
            return _Keys({None: (secret, ["HS256"])}, ignore_kid=True)
        if s.public_key:
            try:
                key = load_pem_public_key(data)
            except ValueError as exc:
                raise AuthConfigError(f"--jwt-public-key: not a PEM public key: {exc}") from None
            return _Keys({None: (key, [_algorithm(key, "--jwt-public-key")])}, ignore_kid=True)
        try:
            keys = jwt.PyJWKSet.from_json(data.decode())
        except (jwt.PyJWTError, ValueError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"--jwt-jwks-file: not a usable JWKS: {exc}") from None
        by_kid: dict[str | None, tuple[Any, list[str]]] = {}
        for jwk in keys.keys:
            by_kid[jwk.key_id] = (jwk.key, [_algorithm(jwk.key, "--jwt-jwks-file")])
        if len(by_kid) == 1:
            by_kid[None] = next(iter(by_kid.values()))
        return _Keys(by_kid)

    def reload(self) -> bool:
        try:
            keys = self._load()
        except AuthConfigError as exc:
            log.error("JWT keys not reloaded, the previous ones stay in force: %s", exc)
            return False
        self._keys = keys
        self._verified.clear()  # tokens of a key that is gone must be checked again
        log.info("JWT keys reloaded (%d key(s))", len({id(k) for k, _ in keys.by_kid.values()}))
        return True

    def verify(self, token: str) -> JwtClaims:
        """The claims of a valid token; InvalidJwt says what is wrong otherwise.

        A token that verified is remembered until its `exp` (plus the leeway), so a
        client sending the same JWT on every call pays the signature check once.
        """
        cached = self._verified.get(token)
        if cached is not None:
            if self._clock() <= cached[1]:
                return cached[0]
            del self._verified[token]
            raise InvalidJwt("the JWT has expired")
        claims = self._verify(token)
        if len(self._verified) >= CACHE_ENTRIES:
            self._verified.clear()  # simple and bounded; the next calls verify again
        self._verified[token] = (claims, claims.expires + self.settings.leeway_seconds)
        return claims

    def _verify(self, token: str) -> JwtClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidJwt("the bearer token is not a well-formed JWT") from None
        kid = header.get("kid")
        keys = self._keys.by_kid
        if self._keys.ignore_kid:
            found = keys.get(None)
        elif kid is None:
            found = keys.get(None)  # a JWKS of one key needs no kid
        else:
            found = keys.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise InvalidJwt("the JWT's signing key (kid) is not one of the trusted keys")
        key, algorithms = found
        s = self.settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=s.audience,
                issuer=s.issuer or None,
                leeway=s.leeway_seconds,
                options=self._options,
            )
        except jwt.InvalidAlgorithmError:
            raise InvalidJwt(
                f"the JWT's algorithm is not accepted (accepted: {', '.join(algorithms)})"
            ) from None
        except jwt.ExpiredSignatureError:
            raise InvalidJwt("the JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidJwt("the JWT is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise InvalidJwt("the JWT is not for this service (audience)") from None
        except jwt.InvalidIssuerError:
            raise InvalidJwt("the JWT's issuer is not the trusted one") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidJwt(f"the JWT lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidJwt("the JWT's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise InvalidJwt(f"the JWT is not valid ({type(exc).__name__})") from None
        return JwtClaims(_subject(claims), _claimed_scopes(claims), float(claims["exp"]))


def _algorithm(key: Any, flag: str) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise AuthConfigError(
        f"{flag}: only RSA and EC P-256 public keys are accepted ({', '.join(_ASYMMETRIC)})"
    )


def _subject(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    return sub[:200] if isinstance(sub, str) and sub else "(no sub)"


def _claimed_scopes(claims: dict[str, Any]) -> frozenset[str]:
    names: list[str] = []
    for claim in ("scope", "scopes"):
        value = claims.get(claim)
        if isinstance(value, str):
            names += value.split()
        elif isinstance(value, list):
            names += [v for v in value if isinstance(v, str)]
    return frozenset(names) & SCOPES
