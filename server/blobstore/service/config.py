"""Server settings: defaults, environment variables and command-line flags in one table."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from blobstore.durations import Seconds, parse_duration
from blobstore.service.admission import AdmissionLimits
from blobstore.storage.factory import StorageSettings
from blobstore.storage.filesystem import JOURNAL_MAX_BLOB_BYTES
from blobstore.store import Limits

_LIMITS = Limits()
_ADMISSION = AdmissionLimits()
_NO_MIN_AGE = Seconds(0)


@dataclass(frozen=True)
class ServerConfig:
    """Everything `blobstore serve` can be told. Each field has a BLOBSTORE_* variable."""

    address: str = "127.0.0.1:50051"
    data_dir: Path = Path("data")
    storage: str = ""
    cache_dir: str = ""
    cache_max_bytes: int = 1 << 30
    cache_max_blob_bytes: int = 1 << 20
    max_blob_bytes: int = _LIMITS.max_blob_bytes
    max_json_bytes: int = _LIMITS.max_json_bytes
    max_unary_bytes: int = _LIMITS.max_unary_bytes
    max_concurrent_rpcs: int = _ADMISSION.max_calls
    max_inflight_bytes: int = _ADMISSION.max_bytes
    max_connections: int = 4096
    max_streams_per_connection: int = 100
    connection_idle_seconds: float = 300.0
    handshake_timeout_seconds: float = 10.0
    keepalive_seconds: float = 60.0
    stream_idle_seconds: float = 60.0
    max_json_values: int = _LIMITS.max_json_values
    max_batch_items: int = _LIMITS.max_batch_items
    io_threads: int = 32
    journal_max_blob_bytes: int = JOURNAL_MAX_BLOB_BYTES
    small_blob_store: str = "files"
    grace_seconds: float = 10.0
    log_level: str = "INFO"
    tokens_file: str = ""
    anonymous: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    jwt_secret_file: str = ""
    jwt_public_key: str = ""
    jwt_jwks_file: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway_seconds: float = 30.0
    auth_failures_free: int = 10
    auth_failure_max_delay_seconds: float = 5.0
    allow_unauthenticated: bool = False
    no_reflection: bool = False
    log_format: str = "text"
    access_log: bool = False
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    max_bytes: int = 0
    max_blobs: int = 0
    min_age: Seconds = _NO_MIN_AGE
    enable_delete: bool = False
    metrics_address: str = ""
    access_log_level: str = "INFO"
    access_log_sample: float = 1.0
    otlp_endpoint: str = ""

    @property
    def metrics_endpoint(self) -> tuple[str, int] | None:
        """Where /metrics is served: --metrics-address, else --metrics-host/--metrics-port;
        None: metrics off. Raises ValueError for an address that is not HOST:PORT."""
        if self.metrics_address:
            host, sep, port = self.metrics_address.rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ValueError(
                    f"--metrics-address {self.metrics_address!r} is not HOST:PORT "
                    "(e.g. 127.0.0.1:9090)"
                )
            return host.strip("[]") or "127.0.0.1", int(port)
        if self.metrics_port:
            return self.metrics_host, self.metrics_port
        return None

    @property
    def limits(self) -> Limits:
        return Limits(
            max_blob_bytes=self.max_blob_bytes,
            max_json_bytes=self.max_json_bytes,
            max_unary_bytes=self.max_unary_bytes,
            max_json_values=self.max_json_values,
            max_batch_items=self.max_batch_items,
        )

    @property
    def storage_settings(self) -> StorageSettings:
        return StorageSettings(
            url=self.storage or str(self.data_dir),
            cache_dir=self.cache_dir,
            cache_max_bytes=self.cache_max_bytes,
            cache_max_blob_bytes=self.cache_max_blob_bytes,
            io_threads=self.io_threads,
            journal_max_blob_bytes=self.journal_max_blob_bytes,
            small_blob_store=self.small_blob_store,
            max_bytes=self.max_bytes,
            max_blobs=self.max_blobs,
            min_age=float(self.min_age),
        )

    @property
    def admission(self) -> AdmissionLimits:
        return AdmissionLimits(
            max_calls=self.max_concurrent_rpcs, max_bytes=self.max_inflight_bytes
        )


HELP = {
    "address": "host:port to listen on for gRPC (port 0 picks a free port)",
    "data_dir": "folder where blobs are stored (created if missing)",
    "storage": "where blobs are stored: file://PATH, a plain folder path, or "
    "s3://BUCKET/PREFIX?endpoint=URL&region=R (credentials from AWS_* variables); "
    "empty = --data-dir",
    "cache_dir": "a local folder for a read cache in front of the storage (hot small blobs "
    "served from local disk, LRU, verified; emptied at start); empty = no cache",
    "cache_max_bytes": "most bytes the read cache keeps (least recently used out first)",
    "cache_max_blob_bytes": "largest blob the read cache keeps",
    "max_blob_bytes": "largest blob accepted, in bytes",
    "max_json_bytes": "largest Json blob accepted, in bytes (JSON is parsed whole)",
    "max_unary_bytes": "largest blob unary Get returns; larger ones need GetStream (gRPC "
    "messages may still be up to 4 MiB, the largest stream chunk)",
    "max_concurrent_rpcs": "most BlobService calls in progress; more get RESOURCE_EXHAUSTED "
    "(OVERLOADED) at once; 0 = no cap",
    "max_inflight_bytes": "most request/reply bytes held in memory by calls in progress; "
    "past it calls get RESOURCE_EXHAUSTED (OVERLOADED) at once; 0 = no cap",
    "max_connections": "most open client connections; more are closed at once (always kept "
    "below the open-file limit, whose soft value is raised to the hard one at start)",
    "max_streams_per_connection": "most calls in progress on one client connection (HTTP/2 "
    "MAX_CONCURRENT_STREAMS); a client queues more until one ends, so a burst on one "
    "connection cannot make the calls of others wait behind it; 0 = no cap",
    "connection_idle_seconds": "a connection without calls for this long is closed (GOAWAY)",
    "handshake_timeout_seconds": "a connection that has not sent its HTTP/2 preface and "
    "settings within this time is closed (slow or silent clients)",
    "keepalive_seconds": "the server pings a connection silent for this long and closes it if "
    "no answer comes within 20 s; clients may ping no more often than every 10 s",
    "stream_idle_seconds": "a PutStream that sends no message, or a GetStream whose reader takes "
    "no chunk, for this long is ended and its temp file or reservation released",
    "max_json_values": "most values (numbers, strings, arrays, objects...) in one Json blob's "
    "text or protobuf json Value; more are refused before parsing (RESOURCE_EXHAUSTED, "
    "BLOB_TOO_LARGE), as each costs memory when parsed whatever the text size; 0 = no cap",
    "max_batch_items": "most items in one BatchPut or BatchGet call; a larger batch is refused "
    "(INVALID_ARGUMENT) before any item is stored or read",
    "io_threads": "threads for blocking disk I/O",
    "journal_max_blob_bytes": "unary puts up to this size are made durable in batches, by one "
    "journal write and fdatasync for all puts arriving together (group commit, Linux); "
    "0 = every put fsyncs its own file and folder",
    "small_blob_store": "where unary puts up to --journal-max-blob-bytes are kept: 'files' (a "
    "file each, after the journal) or 'packs' (records in append-only segments under packs/, "
    "no file per blob; see docs/architecture.md); a folder holding packs keeps using them",
    "grace_seconds": "on SIGTERM/SIGINT, how long in-flight calls may take to finish",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "tokens_file": "file of bearer tokens, one 'sha256:<hex of the token's SHA-256> NAME "
    "SCOPE[,SCOPE...]' a line (scopes read, write, admin), and 'cn:|dns:|uri:NAME ...' "
    "lines for client certificates; turns authentication on; "
    "reloaded on SIGHUP; empty = no tokens (see docs/security.md)",
    "anonymous": "scopes of callers without a token, per API, e.g. 'stepflow.v1=read,write' "
    "(several separated by ';'); only with --tokens-file or a JWT key; default none",
    "tls_cert": "PEM certificate (chain) of the gRPC port; with --tls-key turns TLS on; "
    "certificate, key and client CA are reloaded on SIGHUP",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA certificate(s): clients must present a certificate it signed "
    "(mTLS); needs --tls-cert",
    "jwt_secret_file": "file holding the HS256 shared secret of JWT bearer tokens (at least "
    "32 bytes); turns JWT authentication on (see docs/security.md)",
    "jwt_public_key": "PEM public key of JWT bearer tokens (RSA: RS256, EC P-256: ES256)",
    "jwt_jwks_file": "JWKS file (JSON) of the public keys of JWT bearer tokens, chosen by kid",
    "jwt_issuer": "the `iss` a JWT must have; empty = any issuer",
    "jwt_audience": "the `aud` a JWT must name (required with a JWT key)",
    "jwt_leeway_seconds": "clock skew allowed when checking a JWT's exp, nbf and iat",
    "auth_failures_free": "failed authentications a peer (IP) may make in 60 s before each "
    "further refusal is delayed (0.25 s, doubling)",
    "auth_failure_max_delay_seconds": "the longest delay of a refusal for a peer that keeps "
    "failing to authenticate",
    "allow_unauthenticated": "allow listening beyond loopback without authentication "
    "(no --tokens-file, JWT key or --tls-client-ca); without it such a server refuses to start",
    "no_reflection": "do not serve gRPC reflection (the API's description)",
    "log_format": "text (one line per record) or json (one JSON object per line: time, level, "
    "logger, message, request_id)",
    "access_log": "log one INFO line per blob service call (method, code, duration, peer, "
    "request id)",
    "metrics_port": "serve Prometheus metrics at http://METRICS_HOST:PORT/metrics; 0 = off",
    "metrics_host": "address the metrics endpoint listens on (when --metrics-port is set)",
    "max_bytes": "cap on the content bytes stored: past 95 %% the least recently used blobs "
    "are evicted in the background down to 90 %%; 0 = no cap (with s3://: bounds the read "
    "cache, needs --cache-dir)",
    "max_blobs": "cap on the number of blobs stored, evicted like --max-bytes; 0 = no cap",
    "min_age": "blobs used (put or read) within this long are never evicted: when nothing "
    "else is left a put gets STORAGE_FULL (seconds, or 30m, 12h, 7d)",
    "enable_delete": "serve the Delete and Prune calls without --tokens-file beyond loopback "
    "(with tokens they need the admin scope; on a loopback address they are always on)",
    "metrics_address": "serve Prometheus metrics at http://HOST:PORT/metrics (the same as "
    "--metrics-host and --metrics-port together, which it overrides); empty = off",
    "access_log_level": "level of the access log's lines: DEBUG, INFO, WARNING",
    "access_log_sample": "fraction of calls the access log writes a line for (0-1); calls "
    "that end in an error other than NOT_FOUND are always logged",
    "otlp_endpoint": "send OpenTelemetry traces (a span per call, joining the caller's W3C "
    "traceparent) to this OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318; empty = off "
    "unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set "
    "(and OTEL_TRACES_EXPORTER is not none)",
}


def env_name(field: str) -> str:
    return "BLOBSTORE_" + field.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one --flag per field; each defaults to its environment variable, then the default."""
    defaults = ServerConfig()
    for field in fields(ServerConfig):
        # argparse converts a string default (the variable's text) only for the command
        # being run, and reports a bad one as a usage error instead of a traceback.
        default = os.environ.get(env_name(field.name), getattr(defaults, field.name))
        if field.type in ("bool", bool):  # a switch; its variable is on when 1/true/yes
            parser.add_argument(
                "--" + field.name.replace("_", "-"),
                dest=field.name,
                action="store_true",
                default=str(default).lower() in ("1", "true", "yes", "on"),
                help=f"{HELP[field.name]} (env {env_name(field.name)}=1)",
            )
            continue
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=_converter(field.type, env_name(field.name)),
            default=default,
            help=f"{HELP[field.name]} (env {env_name(field.name)}; default %(default)s)",
        )


def from_arguments(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(**{f.name: getattr(args, f.name) for f in fields(ServerConfig)})


def _converter(type_name: Any, env: str) -> Any:
    convert = _parser_for(type_name)

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {convert.__name__} value {text!r} (from the flag or {env})"
            ) from None

    return parse


def _parser_for(type_name: Any) -> Any:
    name = type_name if isinstance(type_name, str) else type_name.__name__
    return {"int": int, "float": float, "Path": Path, "str": str, "Seconds": duration}[name]


def duration(text: str) -> Seconds:
    return Seconds(parse_duration(text))
