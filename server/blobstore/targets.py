"""Which replicas a client talks to: one address, a list of them, or a DNS name, balanced by gRPC.

Stateless replicas (docs/scale-out.md) all serve the same blobs, so a client may
send any call to any of them. `--target` (or BLOBSTORE_TARGET, or the bridge's
--grpc-target) takes:

- `host:port`: one server, as before (gRPC's default pick_first);
- `host1:port1,host2:port2,...`: several replicas; names are resolved once, at
  start, and the channel balances calls over the addresses with `round_robin`;
- `dns:///name:port`: every address the name resolves to (re-resolved by gRPC
  when connections fail), balanced with `round_robin`.

round_robin only picks connected replicas: when one dies its connection breaks,
calls go to the others, and our retry loop (retry.py) sends a call that failed
with UNAVAILABLE again — to another replica. Every BlobService call is
idempotent (a put of the same content stores it once), so retrying is safe.
"""

from __future__ import annotations

import ipaddress
import socket

ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")


def _split(address: str) -> tuple[str, str]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"target {address!r} is not host:port")
    return host.strip("[]"), port


def _addresses(address: str) -> list[str]:
    host, port = _split(address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        hosts = list(dict.fromkeys(str(info[4][0]) for info in infos))
    else:
        hosts = [str(ip)]
    return [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts]


def channel_target(target: str) -> tuple[str, list[tuple[str, str]]]:
    """The gRPC target string and the extra channel options for a `--target` value."""
    if target.startswith("dns:"):
        return target, [ROUND_ROBIN]
    if "," not in target:
        return target, []
    addresses = [a for part in target.split(",") if part.strip() for a in _addresses(part)]
    # gRPC's ipv4:/ipv6: schemes take a comma-separated list; one list mixes no families.
    scheme = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
    if scheme == "ipv4" and any(a.startswith("[") for a in addresses):
        addresses = [a for a in addresses if not a.startswith("[")]
    return f"{scheme}:{','.join(addresses)}", [ROUND_ROBIN]
