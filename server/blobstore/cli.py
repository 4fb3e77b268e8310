"""The `blobstore` command: serve, verify a data folder, and put/get/stat/find-missing."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from blobstore.client import DEFAULT_TARGET, BlobClient
from blobstore.credentials import channel_credentials
from blobstore.durations import parse_duration
from blobstore.errors import BlobNotFound, BlobStoreError
from blobstore.model import BlobInfo, BlobMeta, BlobType
from blobstore.progress import Progress
from blobstore.service import config as server_config

_TYPES = {"binary": BlobType.BINARY, "json": BlobType.JSON, "flow": BlobType.FLOW}
"""--type's names."""
EXIT_NOT_FOUND = 3
EXIT_CORRUPT = 4
EXIT_ERROR = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _exit_past_native_runtimes(_serve(args))
    if args.command == "verify":
        return _exit_past_native_runtimes(_verify(args))
    try:
        credentials = channel_credentials(
            token=args.token or None,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
        with BlobClient(args.target, timeout=args.timeout, credentials=credentials) as client:
            return int(args.run(client, args))
    except BlobNotFound as exc:
        print(f"blobstore: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except BlobStoreError as exc:
        print(f"blobstore: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as exc:  # ValueError: a --target that is not host:port
        print(f"blobstore: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _exit_past_native_runtimes(code: int) -> int:
    """Ends the process at once, `code` and all output flushed, if the object store was used.

    obstore runs its requests on Rust (tokio) threads that are never told to stop; one
    still running while Python finalizes can panic there and abort the process
    (SIGABRT) after the work is done and reported - `verify --storage s3://` exited -6
    now and then. Nothing is left to do that finalization would do for us.
    """
    if "obstore" not in sys.modules:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


_QUIET_HELP = (
    "no progress bar (one is drawn on standard error for large blobs when it is a terminal)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blobstore", description="Content-addressed blob store")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC server")
    server_config.add_arguments(serve)

    verify = commands.add_parser(
        "verify",
        help="re-hash every stored blob, quarantine bad ones; exit 4 if any were found "
        "(safe while a server runs)",
    )
    verify.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("BLOBSTORE_DATA_DIR", "data")),
        help="the server's data folder (env BLOBSTORE_DATA_DIR; default %(default)s)",
    )
    verify.add_argument(
        "--storage",
        default=os.environ.get("BLOBSTORE_STORAGE", ""),
        help="an s3://BUCKET/PREFIX?endpoint=... URL to verify instead of --data-dir "
        "(env BLOBSTORE_STORAGE; credentials from AWS_* variables)",
    )
    verify.add_argument(
        "--no-quarantine", action="store_true", help="only report bad blobs; move nothing"
    )
    verify.add_argument("-q", "--quiet", action="store_true", help=_QUIET_HELP)

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--target",
            default=os.environ.get("BLOBSTORE_TARGET", DEFAULT_TARGET),
            help="server address, or several replicas as host1:port1,host2:port2 or "
            "dns:///name:port, balanced round_robin (env BLOBSTORE_TARGET; default %(default)s)",
        )
        sub.add_argument("--timeout", type=float, default=600.0, help="seconds per call")
        sub.add_argument(
            "--token",
            default=os.environ.get("BLOBSTORE_TOKEN", ""),
            help="bearer token (env BLOBSTORE_TOKEN, preferred: a flag shows in ps); sent "
            "over TLS, or in plaintext only to a loopback server",
        )
        sub.add_argument(
            "--tls-ca", help="PEM CA certificate to trust for the server (turns TLS on)"
        )
        sub.add_argument("--tls-cert", help="PEM client certificate for mTLS (turns TLS on)")
        sub.add_argument("--tls-key", help="PEM private key of --tls-cert")
        if name in ("put", "get"):
            sub.add_argument("-q", "--quiet", action="store_true", help=_QUIET_HELP)
        return sub

    put = client_command("put", "store a file (or - for stdin); prints the blob id")
    put.add_argument("path", help="file to store, or - for standard input")
    put.add_argument(
        "--type",
        choices=list(_TYPES),
        default="binary",
        help="blob type (default binary); json and flow are canonicalised",
    )
    put.add_argument("--filename", help="file name to keep with the blob (if this put stores it)")
    put.add_argument(
        "--content-type", help="media type to keep with the blob, e.g. application/pdf"
    )
    put.set_defaults(run=_put)

    get = client_command(
        "get",
        "write a blob to a file (or stdout); with -o, print its type, size and metadata "
        "as JSON; exit 3 if absent",
    )
    get.add_argument("blob_id")
    get.add_argument("-o", "--output", help="file to write (default: standard output)")
    get.set_defaults(run=_get)

    stat = client_command(
        "stat", "print a blob's type, size and metadata as JSON; exit 3 if absent"
    )
    stat.add_argument("blob_id")
    stat.add_argument(
        "--last-used",
        action="store_true",
        help="also print when it was last put or read (last_used, ISO 8601 UTC), if the "
        "server keeps that",
    )
    stat.set_defaults(run=_stat)

    missing = client_command("find-missing", "print which of the given ids are not stored")
    missing.add_argument("blob_ids", nargs="+")
    missing.set_defaults(run=_find_missing)

    delete = client_command(
        "delete",
        "remove blobs (admin scope; idempotent); prints the ids that were stored",
    )
    delete.add_argument("blob_ids", nargs="+")
    delete.set_defaults(run=_delete)

    prune = client_command(
        "prune",
        "remove the blobs not used (put or read) for a while (admin scope; the server "
        "does it while serving); prints their ids, then a JSON summary",
    )
    prune.add_argument(
        "--older-than", required=True, type=_duration, help="e.g. 7d, 12h, 30m, 3600 (seconds)"
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would go")
    prune.set_defaults(run=_prune)
    return parser


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    from blobstore import logs
    from blobstore.service.app import ListenError, serve
    from blobstore.service.hardening import install_throttle
    from blobstore.service.security import SecurityConfigError
    from blobstore.storage.factory import UnknownStorage
    from blobstore.storage.filesystem import DataFolderLocked

    cfg = server_config.from_arguments(args)
    logs.configure(cfg.log_level, cfg.log_format)
    install_throttle()
    try:
        asyncio.run(serve(cfg))
    except (ListenError, DataFolderLocked, UnknownStorage, SecurityConfigError, OSError) as exc:
        logging.getLogger("blobstore").error("%s", exc)
        return EXIT_ERROR
    return 0


def _verify(args: argparse.Namespace) -> int:
    from blobstore.errors import BlobStoreError
    from blobstore.storage import objectstore
    from blobstore.storage.factory import local_path
    from blobstore.storage.filesystem.scrub import NotADataFolder, Problem, verify_store
    from blobstore.storage.objectstore.scrub import verify_objects

    def show(problem: Problem) -> None:
        where = f"moved to {problem.quarantined_to}" if problem.quarantined_to else "left in place"
        print(f"BAD {problem.blob_id or problem.path}: {problem.reason} ({where})", flush=True)

    try:
        if objectstore.is_object_store(args.storage):
            report = asyncio.run(
                verify_objects(
                    objectstore.parse(args.storage),
                    quarantine=not args.no_quarantine,
                    on_problem=show,
                )
            )
        else:
            folder = local_path(args.storage) if args.storage else args.data_dir
            with Progress("verify", quiet=args.quiet) as progress:
                report = verify_store(
                    folder or args.data_dir,
                    quarantine=not args.no_quarantine,
                    on_problem=show,
                    on_progress=progress if progress.wanted else None,
                )
    except (NotADataFolder, OSError, BlobStoreError, ValueError) as exc:
        print(f"blobstore verify: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(
        f"checked {report.checked} blob(s), {report.bytes_checked} bytes: "
        f"{len(report.problems)} bad, {report.vanished} removed while checking"
    )
    if report.journal_segments:
        print(
            f"journal: {report.journal_segments} segment(s) of small puts not yet "
            "checkpointed, not checked here (a running server syncs them; after a crash "
            "the next server start replays them)"
        )
    return 0 if report.ok else EXIT_CORRUPT


def _put(client: BlobClient, args: argparse.Namespace) -> int:
    blob_type = _TYPES[args.type]
    meta = BlobMeta(args.filename, args.content_type)
    if args.path == "-":
        result = client.put_bytes(sys.stdin.buffer.read(), blob_type, meta=meta)
    else:
        with Progress("put", quiet=args.quiet) as progress:
            hook = progress if progress.wanted else None
            result = client.put_file(args.path, blob_type, meta=meta, progress=hook)
    print(result.info.blob_id)
    return 0


def _get(client: BlobClient, args: argparse.Namespace) -> int:
    if args.output:
        # Standard output is free when the content goes to a file: say what was written.
        with Progress("get", quiet=args.quiet) as progress:
            hook = progress if progress.wanted else None
            info = client.get_to_file(args.blob_id, args.output, progress=hook)
        print(json.dumps(_info_json(info)))
    else:
        sys.stdout.buffer.write(client.get(args.blob_id).data)
        sys.stdout.buffer.flush()
    return 0


def _stat(client: BlobClient, args: argparse.Namespace) -> int:
    found = client.stat_last_used(args.blob_id)
    if found is None:
        print(json.dumps({"blob_id": args.blob_id, "exists": False}))
        return EXIT_NOT_FOUND
    info, last_used = found
    shown = _info_json(info)
    if args.last_used and last_used is not None:
        shown["last_used"] = datetime.fromtimestamp(last_used, UTC).isoformat()
    print(json.dumps(shown))
    return 0


def _delete(client: BlobClient, args: argparse.Namespace) -> int:
    for blob_id in client.delete(args.blob_ids):
        print(blob_id)
    return 0


def _prune(client: BlobClient, args: argparse.Namespace) -> int:
    ids, total = client.prune(args.older_than, dry_run=args.dry_run)
    for blob_id in ids:
        print(blob_id)
    summary = {"dry_run": args.dry_run, "blobs": len(ids), "bytes": total}
    print(json.dumps(summary))
    return 0


def _find_missing(client: BlobClient, args: argparse.Namespace) -> int:
    for blob_id in client.find_missing(args.blob_ids):
        print(blob_id)
    return 0


def _info_json(info: BlobInfo) -> dict[str, object]:
    shown: dict[str, object] = {
        "blob_id": info.blob_id,
        "exists": True,
        "blob_type": info.blob_type.value,
        "size": info.size,
    }
    if info.meta.filename is not None:
        shown["filename"] = info.meta.filename
    if info.meta.content_type is not None:
        shown["content_type"] = info.meta.content_type
    return shown


if __name__ == "__main__":
    raise SystemExit(main())
