"""One decision, for any transport: credentials in, a Principal or a refusal out.

`Authority.authenticate(authorization)` takes the value of an `authorization` header
(gRPC metadata or HTTP) and returns who the caller is - a static token's entry or a
JWT's subject, with its scopes - or the refusal (errors.InvalidCredentials), or None
when no credentials were presented. `Authority.decide(api, scope, authorization)`
adds the anonymous policy and the scope check; `certificate(names)` maps a verified
client certificate's names (see grpc/auth.py for where they come from) to a
Principal. gRPC's interceptors (grpc/auth.py) use it; the bridge's HTTP routes can
use the same object.

Static tokens are looked up first (a hash and constant-time comparisons); a token
that is not in the file and has the shape of a JWT (three dot-separated parts) is
verified as a JWT when JWTs are configured.
"""

from __future__ import annotations

from dataclasses import dataclass

from blobstore import errors
from blobstore.security.jwts import InvalidJwt, JwtVerifier
from blobstore.security.tokens import AuthConfigError, TokenTable, parse_scopes

# The APIs a policy can name (the proto packages of the gated services).
APIS = ("blobstore.v1", "stepflow.v1")
_BEARER = "bearer "


@dataclass(frozen=True)
class Principal:
    """Who a caller is (for messages and logs: never a secret) and what it may do."""

    name: str
    kind: str  # "token", "jwt", "certificate" or "anonymous"
    scopes: frozenset[str]

    def describe(self) -> str:
        return f"{self.kind} {self.name!r}"


def parse_anonymous(text: str) -> dict[str, frozenset[str]]:
    """Parses `--anonymous`: `API=SCOPE[,SCOPE...]` items separated by spaces or `;`."""
    policy: dict[str, frozenset[str]] = {}
    for item in text.replace(";", " ").split():
        api, sep, scope_text = item.partition("=")
        if not sep or api not in APIS:
            raise AuthConfigError(
                f"--anonymous: {item!r} is not API=SCOPE[,SCOPE...] with API one of "
                f"{', '.join(sorted(APIS))}"
            )
        policy[api] = parse_scopes(scope_text, "--anonymous") if scope_text else frozenset()
    return policy


class Authority:
    """The credentials this server accepts and the policy for callers without any."""

    def __init__(
        self,
        tokens: TokenTable | None,
        anonymous: dict[str, frozenset[str]],
        jwt: JwtVerifier | None = None,
    ) -> None:
        self.tokens = tokens
        self.anonymous = anonymous
        self.jwt = jwt

    def describe_anonymous(self) -> str:
        """The anonymous policy as --anonymous spells it (for the start-up log)."""
        granted = [f"{api}={','.join(sorted(s))}" for api, s in self.anonymous.items() if s]
        return "; ".join(granted) or "nothing"

    def reload(self) -> None:
        """Reads the tokens file and the JWT keys again (SIGHUP); failures keep the old."""
        if self.tokens is not None:
            self.tokens.reload()
        if self.jwt is not None:
            self.jwt.reload()

    def authenticate(self, authorization: str | None) -> Principal | errors.Unauthenticated | None:
        """The caller named by an `authorization` value; None when there is none."""
        if authorization is None:
            return None
        if authorization[: len(_BEARER)].lower() != _BEARER:
            return errors.InvalidCredentials(
                "the authorization metadata must be 'Bearer TOKEN' (its value is not shown)"
            )
        token = authorization[len(_BEARER) :].strip()
        if not token:
            return errors.InvalidCredentials(
                "the authorization metadata must be 'Bearer TOKEN' (its value is not shown)"
            )
        entry = self.tokens.find(token) if self.tokens is not None else None
        if entry is not None:
            return Principal(entry.name, "token", entry.scopes)
        if self.jwt is not None and token.count(".") == 2:
            try:
                claims = self.jwt.verify(token)
            except InvalidJwt as exc:
                return errors.InvalidCredentials(str(exc))
            return Principal(claims.subject, "jwt", claims.scopes)
        return errors.InvalidCredentials("the bearer token is not valid (unknown or revoked)")

    def certificate(self, names: list[str]) -> Principal | None:
        """The Principal of a verified client certificate with these names, if the file maps one."""
        entry = self.tokens.find_identity(names) if self.tokens is not None else None
        return None if entry is None else Principal(entry.name, "certificate", entry.scopes)

    def decide(
        self, api: str, scope: str, authorization: str | None
    ) -> Principal | errors.BlobStoreError:
        """The caller if it may do `scope` on `api`, else the error to refuse it with."""
        found = self.authenticate(authorization)
        if found is None:
            granted = self.anonymous.get(api, frozenset())
            if scope in granted:
                return Principal("anonymous", "anonymous", granted)
            return errors.Unauthenticated(
                f"{api} calls without a token may not {scope}: send "
                f"'authorization: Bearer TOKEN' with a token that has scope {scope}"
            )
        if isinstance(found, errors.BlobStoreError):
            return found
        return self.authorize(found, scope)

    @staticmethod
    def authorize(principal: Principal, scope: str) -> Principal | errors.PermissionDenied:
        if scope in principal.scopes:
            return principal
        return errors.PermissionDenied(
            f"{principal.describe()} has scope(s) {','.join(sorted(principal.scopes)) or 'none'}"
            f"; this call needs {scope}"
        )
