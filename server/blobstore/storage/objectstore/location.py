"""Where the blobs live: an `s3://bucket/prefix?endpoint=...&region=...` URL made into stores.

The URL names the bucket, the prefix under which every key of this backend lives,
and the S3 settings that are not secrets (`endpoint`, `region`, and any other
obstore S3 setting as a query parameter, e.g. `virtual_hosted_style_request`).
Credentials come from the standard AWS_* variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE...), never from the URL,
so that it can be logged.

Timeouts and retries are set so that an unreachable store fails a call within a
few seconds (UNAVAILABLE) instead of hanging it, while throttling and transient
5xx answers are retried with exponential backoff first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

S3_SCHEMES = ("s3://",)

# obstore's copy-if-not-exists via CopyObject with If-None-Match: * (a 412 when the target
# exists). SeaweedFS and AWS S3 honour it; docs/scale-out.md lists what was tested.
COPY_IF_NOT_EXISTS = "header:If-None-Match:*"

RETRY: RetryConfig = {
    "max_retries": 4,
    "retry_timeout": timedelta(seconds=5),
    "backoff": {
        "init_backoff": timedelta(milliseconds=50),
        "max_backoff": timedelta(seconds=1),
        "base": 2,
    },
}


class BadStorageUrl(ValueError):
    """The URL does not name a bucket, or has a setting obstore does not know."""


@dataclass(frozen=True)
class Location:
    """A parsed storage URL: what to build stores from."""

    bucket: str
    prefix: str
    config: dict[str, str]

    @property
    def description(self) -> str:
        endpoint = self.config.get("endpoint", "AWS")
        return f"s3://{self.bucket}/{self.prefix} at {endpoint}"

    def store(self, headers: dict[str, str] | None = None) -> S3Store:
        """A store on the prefix; `headers` are added to every request it makes."""
        options: ClientConfig = {
            "connect_timeout": timedelta(seconds=2),
            "timeout": timedelta(minutes=10),  # a whole large object's transfer
            "pool_idle_timeout": timedelta(seconds=30),
        }
        if self.config.get("endpoint", "").startswith("http://"):
            options["allow_http"] = True
        if headers:
            options["default_headers"] = headers
        settings: dict[str, Any] = {"copy_if_not_exists": COPY_IF_NOT_EXISTS, **self.config}
        try:
            return S3Store(
                self.bucket,
                prefix=self.prefix or None,
                client_options=options,
                retry_config=RETRY,
                **settings,
            )
        except Exception as exc:
            raise BadStorageUrl(f"cannot use s3://{self.bucket}/{self.prefix}: {exc}") from exc


def is_object_store(url: str) -> bool:
    return url.startswith(S3_SCHEMES)


def parse(url: str) -> Location:
    """The Location of an `s3://bucket/prefix?setting=value&...` URL."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise BadStorageUrl(f"storage {url!r}: expected s3://BUCKET/PREFIX?endpoint=...&region=...")
    config = dict(parse_qsl(parts.query, keep_blank_values=True))
    for secret in ("access_key_id", "secret_access_key", "session_token", "token"):
        if secret in config:
            raise BadStorageUrl(
                f"storage URL must not carry {secret}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead"
            )
    return Location(parts.netloc, parts.path.strip("/"), config)
