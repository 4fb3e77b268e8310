"""Client credentials: TLS (a CA to trust, a client certificate for mTLS) and a bearer token.

`channel_credentials()` builds the grpc.ChannelCredentials that BlobClient and
AsyncBlobClient take. A token rides as call credentials (`authorization: Bearer
...` on every call). gRPC sends call credentials only over a secure channel: with
TLS that is the TLS channel; without TLS the token is sent only to a loopback
server (grpc.local_channel_credentials, which refuses other peers), so a token
never crosses the network in plaintext.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def channel_credentials(
    *,
    token: str | None = None,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls: bool = False,
) -> grpc.ChannelCredentials | None:
    """The credentials for these settings, or None for a plaintext channel without a token.

    `tls_ca`: the CA certificate(s) (PEM) to trust instead of the system's; `tls_cert`
    and `tls_key`: a client certificate for mTLS; `tls`: use TLS with the system's CAs
    even when none of the files is given. Raises ValueError for unusable settings.
    """
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    secure = tls or bool(tls_ca or tls_cert)
    if secure:
        base = grpc.ssl_channel_credentials(
            root_certificates=_read(tls_ca, "--tls-ca") if tls_ca else None,
            private_key=_read(tls_key, "--tls-key") if tls_key else None,
            certificate_chain=_read(tls_cert, "--tls-cert") if tls_cert else None,
        )
    elif token:
        base = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    else:
        return None
    if not token:
        return base
    return grpc.composite_channel_credentials(base, grpc.access_token_call_credentials(token))


def _read(path: str | Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
