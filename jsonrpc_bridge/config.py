"""Bridge settings: defaults, BLOBSTORE_BRIDGE_* environment variables and flags in one table."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from blobstore.json_values import DEFAULT_MAX_VALUES

MiB = 1024 * 1024


@dataclass(frozen=True)
class BridgeConfig:
    """Everything `blobstore-bridge` can be told. Each field has a BLOBSTORE_BRIDGE_* variable."""

    grpc_target: str = "127.0.0.1:50051"
    http: str = "127.0.0.1:8080"
    stdio: bool = False
    deadline_seconds: float = 30.0
    retry_attempts: int = 6
    max_request_bytes: int = 32 * MiB
    max_get_bytes: int = 64 * MiB
    max_batch_concurrency: int = 32
    max_json_values: int = DEFAULT_MAX_VALUES
    max_connections: int = 1024
    idle_timeout_seconds: float = 30.0
    body_timeout_seconds: float = 60.0
    grace_seconds: float = 10.0
    log_level: str = "INFO"
    blob_type_names: str = "schema"
    log_format: str = "text"
    access_log: bool = False
    access_log_level: str = "INFO"
    access_log_sample: float = 1.0
    metrics: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tls_client_auth: str = ""
    client_identities: str = ""
    upstream_token_file: str = ""
    upstream_tls_ca: str = ""
    upstream_tls_cert: str = ""
    upstream_tls_key: str = ""
    auth_failures_free: int = 10
    auth_failure_max_delay_seconds: float = 5.0
    trusted_proxies: str = ""
    allow_unauthenticated: bool = False
    otlp_endpoint: str = ""


HELP = {
    "grpc_target": "host:port of the gRPC BlobService; several replicas as "
    "host1:port1,host2:port2 or dns:///name:port (balanced round_robin)",
    "http": "host:port to serve JSON-RPC over HTTP on (port 0 picks a free port)",
    "stdio": "serve JSON-RPC on stdin/stdout (one message per line) instead of HTTP",
    "deadline_seconds": "deadline of each call to the gRPC service, retries included, in seconds",
    "retry_attempts": "attempts per call when the service is unavailable (jittered exponential "
    "backoff); 1 switches retrying off",
    "max_request_bytes": "largest HTTP body or stdio line accepted, in bytes",
    "max_get_bytes": "largest blob blobs/get returns, in bytes (it is held in memory whole; "
    "Binary grows by a third in base64); larger ones get -32002",
    "max_batch_concurrency": "most elements of one JSON-RPC batch run at a time; the rest "
    "wait their turn",
    "max_json_values": "most JSON values in one HTTP body or stdio line; more are refused with "
    "-32006 before parsing (each costs memory when parsed, whatever the size)",
    "max_connections": "most open HTTP connections; more are answered 503 and closed (always "
    "kept below the open-file limit, whose soft value is raised to the hard one at start)",
    "idle_timeout_seconds": "an HTTP connection with no request in progress for this long is "
    "closed, also one still sending its request line and headers",
    "body_timeout_seconds": "most time to receive one HTTP request body; slower ones get 408 "
    "and their connection is closed",
    "grace_seconds": "on SIGTERM/SIGINT, how long in-flight calls may take to finish",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "blob_type_names": "how blobs/get names blob types: schema (data, flow, binary: what the "
    "Stepflow SDKs decode) or page (Json, Binary: the protocol page's examples)",
    "log_format": "text or json (one JSON object per line: time, level, logger, message, "
    "request_id)",
    "access_log": "log one INFO line per HTTP request (method, route, status, duration, peer, "
    "request id)",
    "access_log_level": "level of the access log's lines: DEBUG, INFO or WARNING",
    "access_log_sample": "fraction of requests the access log writes a line for (0-1); "
    "requests answered 5xx or 4xx other than 404 are always logged",
    "metrics": "serve Prometheus metrics at GET /metrics on the HTTP port",
    "tls_cert": "PEM certificate chain of the HTTP listener: it speaks HTTPS only (with --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "CA certificate(s) (PEM) that client certificates of the HTTPS listener "
    "must be signed by (mTLS); reloaded on SIGHUP with --tls-cert/--tls-key",
    "tls_client_auth": "with --tls-client-ca: required (every connection presents a "
    "certificate; the default, as on the gRPC server) or optional (callers without one "
    "are decided by their Authorization header as before)",
    "client_identities": "file of cn:/dns:/uri: lines (the gRPC server's tokens-file "
    "format) mapping verified client certificates to scopes; the bridge checks them and "
    "calls the gRPC service with its own credentials; reloaded on SIGHUP",
    "upstream_token_file": "file holding the bridge's own token for the gRPC service, sent "
    "on calls whose caller sent no Authorization header (and on every stdio call; with "
    "--client-identities only on calls of listed client certificates); reloaded on SIGHUP; "
    "else $BLOBSTORE_TOKEN",
    "upstream_tls_ca": "CA certificate(s) to verify the gRPC service's TLS certificate; "
    "turns TLS on for the bridge's gRPC channel",
    "upstream_tls_cert": "client certificate (PEM) for mTLS to the gRPC service; turns TLS on; "
    "reloaded on SIGHUP with --upstream-tls-ca and --upstream-tls-key",
    "upstream_tls_key": "private key of --upstream-tls-cert",
    "auth_failures_free": "failed authentications an HTTP client (IP) may make in 60 s "
    "before each further refusal is delayed (0.25 s, doubling); as the gRPC server's flag, "
    "for the callers the server cannot see behind the bridge",
    "auth_failure_max_delay_seconds": "the longest delay of a refusal for an HTTP client "
    "that keeps failing to authenticate (0 = no delay)",
    "trusted_proxies": "addresses or networks (comma-separated, e.g. 10.0.0.0/8) of reverse "
    "proxies in front of the bridge: a request from one of them names its client by "
    "X-Forwarded-For (the right-most address not trusted), for failed-authentication "
    "counting and the access log; empty = the TCP peer is the client",
    "allow_unauthenticated": "listen beyond loopback even where anyone who connects could "
    "read and store blobs (a service token for callers without one, or a gRPC service "
    "that takes calls without a token); warns once",
    "otlp_endpoint": "send OpenTelemetry traces (a span per HTTP request, joining the "
    "caller's W3C traceparent, passed on to the gRPC service) to this OTLP/HTTP endpoint, "
    "e.g. http://127.0.0.1:4318; empty = off unless OTEL_EXPORTER_OTLP_ENDPOINT or "
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (and OTEL_TRACES_EXPORTER is not none)",
}


def env_name(field: str) -> str:
    return "BLOBSTORE_BRIDGE_" + field.upper()


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"", "0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def positive(convert: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = convert(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
        return value

    return parse


def non_negative(convert: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = convert(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
        return value

    return parse


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            named = " or ".join(c for c in choices if c)  # "": the unset default
            raise argparse.ArgumentTypeError(f"expected {named}, not {text!r}")
        return value

    return parse


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, not {text}")
    return value


_PARSERS: dict[str, Callable[[str], object]] = {
    "grpc_target": str,
    "http": str,
    "stdio": parse_bool,
    "deadline_seconds": positive(float),
    "retry_attempts": positive(int),
    "max_request_bytes": positive(int),
    "max_get_bytes": positive(int),
    "max_batch_concurrency": positive(int),
    "max_json_values": positive(int),
    "max_connections": positive(int),
    "idle_timeout_seconds": positive(float),
    "body_timeout_seconds": positive(float),
    "grace_seconds": float,
    "log_level": str,
    "blob_type_names": one_of("schema", "page"),
    "log_format": one_of("text", "json"),
    "access_log": parse_bool,
    "access_log_level": one_of("debug", "info", "warning"),
    "access_log_sample": fraction,
    "metrics": parse_bool,
    "tls_cert": str,
    "tls_key": str,
    "tls_client_ca": str,
    "tls_client_auth": one_of("", "optional", "required"),
    "client_identities": str,
    "upstream_token_file": str,
    "upstream_tls_ca": str,
    "upstream_tls_cert": str,
    "upstream_tls_key": str,
    "auth_failures_free": non_negative(int),
    "trusted_proxies": str,
    "auth_failure_max_delay_seconds": non_negative(float),
    "allow_unauthenticated": parse_bool,
    "otlp_endpoint": str,
}


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ) -> None:
    """One --flag per field; each defaults to its environment variable, then the default."""
    defaults = BridgeConfig()
    for field in fields(BridgeConfig):
        env = env_name(field.name)
        convert = _PARSERS[field.name]
        default = getattr(defaults, field.name)
        if env in environ:
            try:
                default = convert(environ[env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env}: {exc}")
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{HELP[field.name]} (env {env}; default %(default)s)"
        if field.type == "bool" or isinstance(default, bool):
            parser.add_argument(
                flag, dest=field.name, action="store_true", default=default, help=help_text
            )
        else:
            parser.add_argument(
                flag, dest=field.name, type=convert, default=default, help=help_text
            )


def from_arguments(args: argparse.Namespace) -> BridgeConfig:
    return BridgeConfig(**{f.name: getattr(args, f.name) for f in fields(BridgeConfig)})


def split_address(address: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; raises ValueError naming the problem."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, not {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
