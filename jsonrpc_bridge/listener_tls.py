"""TLS of the bridge's HTTP listener: HTTPS, client certificates (mTLS), reload on SIGHUP.

* `--tls-cert/--tls-key`: the listener speaks HTTPS only (TLS 1.2+).
* `--tls-client-ca`: client certificates are verified against this CA (expired ones,
  and ones of another CA, fail the TLS handshake). `--tls-client-auth required` (the
  default with a client CA, as on the gRPC server) makes every connection present
  one; `optional` lets a caller without a certificate in, to be decided by its
  `Authorization` header as before, while a certificate that is presented must still
  verify. What a verified certificate may do is client_identity.py's business.

Reload (`reload()`, on SIGHUP): the files are read again into a new SSLContext, which
the next handshakes use; connections already open keep theirs, so nothing is dropped.
asyncio binds a listener to one SSLContext, so the listener's context is a fixed base
whose server-name callback (called by OpenSSL for every ClientHello, with or without
SNI) switches each new connection to the current context. Files that do not load
leave the context in force, and the error is logged. With a client CA, TLS sessions
are not resumed (no tickets): a resumed session skips the certificate check against the
CA in force, which would let a certificate of a CA removed on SIGHUP back in.
"""

from __future__ import annotations

import logging
import ssl

log = logging.getLogger("jsonrpc_bridge")

CLIENT_AUTH = ("optional", "required")


class ListenerTlsError(OSError):
    """TLS files of the listener that cannot be used; the bridge does not start."""


class ListenerTls:
    """The listener's SSLContext and what it was loaded from; reloadable."""

    def __init__(
        self, cert: str, key: str, client_ca: str = "", client_auth: str = "required"
    ) -> None:
        if client_auth not in CLIENT_AUTH:
            raise ListenerTlsError(f"--tls-client-auth must be {' or '.join(CLIENT_AUTH)}")
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.client_auth = client_auth
        self._current = self._load()
        # The base: what asyncio's listener holds. Each handshake moves to _current.
        self.context = self._load()
        self.context.sni_callback = self._switch

    @property
    def verifies_clients(self) -> bool:
        return bool(self.client_ca)

    def describe(self) -> str:
        if not self.client_ca:
            return "HTTPS"
        return f"HTTPS, client certificates {self.client_auth} (CA {self.client_ca})"

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ListenerTlsError(
                f"--tls-cert/--tls-key ({self.cert}, {self.key}) not usable: {_why(exc)}"
            ) from None
        if self.client_ca:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ListenerTlsError(
                    f"--tls-client-ca ({self.client_ca}) not usable: {_why(exc)}"
                ) from None
            if not context.get_ca_certs():
                raise ListenerTlsError(f"--tls-client-ca ({self.client_ca}) holds no certificate")
            # The same mode in every context: OpenSSL fixes it when a connection starts.
            context.verify_mode = (
                ssl.CERT_REQUIRED if self.client_auth == "required" else ssl.CERT_OPTIONAL
            )
            # No session resumption: a resumed session skips the certificate check, so a
            # client of a CA removed on SIGHUP could come back on an old session (tickets
            # are kept by the base context, which a reload does not replace).
            context.options |= ssl.OP_NO_TICKET
            context.num_tickets = 0
        return context

    def _switch(self, connection: ssl.SSLObject, server_name: str | None, _: object) -> None:
        connection.context = self._current

    def reload(self) -> bool:
        """Reads the files again for the next handshakes; False (logged) keeps the old."""
        try:
            context = self._load()
        except ListenerTlsError as exc:
            log.error("HTTPS certificate not reloaded, the one in force stays: %s", exc)
            return False
        self._current = context  # one assignment: a handshake sees the old or the new
        log.info(
            "HTTPS certificate, key%s reloaded; new connections use them",
            " and client CA" if self.client_ca else "",
        )
        return True


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return str(exc.strerror or exc)
