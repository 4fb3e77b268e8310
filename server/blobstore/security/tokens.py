"""The tokens file: bearer-token hashes and client-certificate identities, with scopes.

One entry a line, `#` starts a comment:

    sha256:<64 hex digits of the token's SHA-256>  NAME  SCOPE[,SCOPE...]
    cn:<certificate common name>                   NAME  SCOPE[,SCOPE...]
    dns:<certificate SAN DNS name>                 NAME  SCOPE[,SCOPE...]
    uri:<certificate SAN URI, e.g. spiffe://...>   NAME  SCOPE[,SCOPE...]

Only hashes of tokens are stored, so the file (or a backup of it) gives no token
away. A presented token is hashed and compared with every entry by
hmac.compare_digest (no early exit). Certificate lines (`cn:`/`dns:`/`uri:`) map the
subject of a client certificate that the configured client CA signed to scopes; they
are compared exactly (the CA vouches for the certificate, the line only names it);
a name with spaces is written percent-encoded (`cn:build%20agent`).
A file of the first form only (the format before certificates) reads as before.

TokenTable.reload() (SIGHUP) swaps the whole table in one assignment: a call sees the
old table or the new; a file that does not parse leaves the old one in force.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

log = logging.getLogger("blobstore.security")

SCOPES = frozenset({"read", "write", "admin"})
HASH_PREFIX = "sha256:"
# The certificate fields a line may name, by prefix (see certificate_names()).
IDENTITY_KINDS = ("cn", "dns", "uri")


class AuthConfigError(Exception):
    """A tokens file or policy that cannot be used; the server does not start."""


@dataclass(frozen=True)
class TokenEntry:
    """One line of the tokens file: a token's hash, or (digest empty) a certificate name."""

    digest: bytes
    name: str
    scopes: frozenset[str]
    identity: str = ""  # "cn:worker-1", "dns:...", "uri:..." for a certificate line


def identity_names(
    uris: Iterable[str], dns_names: Iterable[str], common_names: Iterable[str]
) -> list[str]:
    """A verified client certificate's names as lines spell them, most specific first:
    its SAN URIs, then its SAN DNS names, then its subject's common name(s). The gRPC
    server (grpc/auth.py) and the bridge's HTTPS listener both look lines up in this order.
    """
    return (
        [f"uri:{name}" for name in uris]
        + [f"dns:{name}" for name in dns_names]
        + [f"cn:{name}" for name in common_names]
    )


def token_hash(token: str) -> str:
    """The form a token takes in the tokens file: `sha256:` and its hex SHA-256."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(text: str, where: str) -> frozenset[str]:
    scopes = frozenset(s for s in text.split(",") if s)
    unknown = scopes - SCOPES
    if unknown or not scopes:
        raise AuthConfigError(
            f"{where}: unknown scope(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"scopes are {', '.join(sorted(SCOPES))}"
        )
    return scopes


def parse_tokens(text: str, source: str = "tokens file") -> tuple[TokenEntry, ...]:
    """Parses a tokens file; AuthConfigError names the line of the first problem."""
    entries: list[TokenEntry] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        parts = line.split()
        if len(parts) != 3:
            raise AuthConfigError(
                f"{where}: expected 'sha256:<64 hex digits> NAME SCOPE[,SCOPE...]' or "
                f"'cn:|dns:|uri:<certificate name> NAME SCOPE[,SCOPE...]', "
                f"found {len(parts)} field(s)"
            )
        first, name, scope_text = parts
        scopes = parse_scopes(scope_text, where)
        kind, sep, value = first.partition(":")
        if sep and kind in IDENTITY_KINDS and value:
            entries.append(TokenEntry(b"", name, scopes, f"{kind}:{unquote(value)}"))
            continue
        digest_hex = first.removeprefix(HASH_PREFIX)
        if not first.startswith(HASH_PREFIX) or len(digest_hex) != 64:
            raise AuthConfigError(
                f"{where}: the first field must be sha256: and the 64 hex digits of the "
                "token's SHA-256 (never the token itself), or cn:, dns: or uri: and a "
                "client certificate's name"
            )
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError:
            raise AuthConfigError(f"{where}: the hash is not hexadecimal") from None
        entries.append(TokenEntry(digest, name, scopes))
    return tuple(entries)


class _Table:
    """One immutable reading of the file: token entries, and certificate names to entries."""

    __slots__ = ("identities", "tokens")

    def __init__(self, entries: tuple[TokenEntry, ...]) -> None:
        self.tokens = tuple(e for e in entries if not e.identity)
        self.identities = {e.identity: e for e in entries if e.identity}


class TokenTable:
    """The tokens (and certificate identities) of a file, reloadable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._table = _Table(self._read())

    def _read(self) -> tuple[TokenEntry, ...]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"cannot read the tokens file {self.path}: {exc}") from None
        return parse_tokens(text, str(self.path))

    def __len__(self) -> int:
        return len(self._table.tokens)

    @property
    def identities(self) -> int:
        """How many certificate lines the file has."""
        return len(self._table.identities)

    def reload(self) -> bool:
        """Reads the file again; on a problem, logs it and keeps the current entries."""
        try:
            entries = self._read()
        except AuthConfigError as exc:
            log.error("tokens not reloaded, the previous %d stay in force: %s", len(self), exc)
            return False
        self._table = _Table(entries)  # one assignment: a call sees the old table or the new
        log.info(
            "tokens reloaded from %s: %d token(s), %d certificate identit(ies)",
            self.path,
            len(self),
            self.identities,
        )
        return True

    def find(self, token: str) -> TokenEntry | None:
        """The entry whose hash is the token's, comparing with every entry."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for entry in self._table.tokens:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found

    def find_identity(self, names: list[str]) -> TokenEntry | None:
        """The first certificate line naming one of `names` ("cn:...", "dns:...", "uri:...")."""
        identities = self._table.identities
        for name in names:
            entry = identities.get(name)
            if entry is not None:
                return entry
        return None
