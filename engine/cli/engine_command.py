"""`int8wb engine` (also `python -m int8wb.engine`): run the engine process.

Two ways to start it:

- Remote: `int8wb engine --listen tcp://0.0.0.0:5555 --connection-file engine.json`
  binds the address, writes a fresh random key and the address into the
  connection file (mode 0600) and serves any client that signs with that key.
  Copy the file to the GUI's machine and open it there. Messages are signed,
  not encrypted: across an untrusted network, tunnel the port through SSH.
  IPv6 addresses go in brackets: `tcp://[::1]:5555`.
- Local child (what `engine.link.client.EngineClient.start_local` does):
  `--key-stdin` reads `{"key": "<hex>"}` as the first line of stdin, prints
  `{"address": ..., "pid": ...}` as one line on stdout once listening, and exits
  when stdin reaches end-of-file (the parent is gone) or `--parent-pid` is no
  longer its parent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from int8wb.engine.cli import _common
from int8wb.engine.errors import BadInput
from int8wb.engine.link import protocol

WILDCARD_HOSTS = {"0.0.0.0", "*", "::", "[::]", "[::0]"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = _common.documented_command(
        subparsers, "engine", help="run the engine process (for a remote GUI, or as the GUI's local child)", doc=__doc__
    )
    add_arguments(parser)
    parser.set_defaults(func=main)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default="tcp://127.0.0.1:0",
        metavar="tcp://HOST:PORT",
        help="address to bind; port 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--connection-file",
        type=Path,
        metavar="PATH",
        help="write address + key here (mode 0600) for clients to connect with",
    )
    parser.add_argument(
        "--key-stdin",
        action="store_true",
        help="read the session key from stdin and exit when stdin closes (local child)",
    )
    parser.add_argument("--parent-pid", type=int, help="exit when this process is no longer the parent")
    parser.add_argument(
        "--session",
        default="int8wb.engine.process.session:Session",
        metavar="MODULE:CALLABLE",
        help="what runs the jobs (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=protocol.MAX_REQUEST_BYTES,
        help="larger requests are dropped (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-remote-code",
        action="store_true",
        help="let models run the Python code they ship (transformers' trust_remote_code); no request can",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    from int8wb.engine.process.server import EngineServer, load_session_factory

    _check_listen(args.listen)
    parent_gone = threading.Event()
    if args.key_stdin:
        key = _read_key(sys.stdin.buffer.readline())
        threading.Thread(target=_watch_stdin, args=(parent_gone,), name="stdin-watch", daemon=True).start()
    elif args.connection_file is None:
        raise BadInput("without --key-stdin, give --connection-file so that clients can learn the key")
    else:
        key = protocol.new_key()
    options = {"allow_remote_code": True} if args.allow_remote_code else {}
    server = EngineServer(
        key,
        args.listen,
        load_session_factory(args.session, **options),
        args.max_request_bytes,
        parent_pid=args.parent_pid,
        parent_gone=parent_gone,
    )
    address = _public_address(server.address)
    if args.connection_file is not None:
        write_connection_file(args.connection_file, address, key)
        logging.getLogger("engine.process.server").info("connection file: %s", args.connection_file)
    if args.key_stdin:
        print(json.dumps({"address": address, "pid": os.getpid()}), flush=True)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not fill an unread pipe
    try:
        status = server.serve()
    finally:
        if args.connection_file is not None:
            _remove_connection_file(args.connection_file, key)
    if any(t.name.startswith("job-") and t.is_alive() for t in threading.enumerate()):
        logging.shutdown()
        os._exit(status)  # a job stuck in native code must not keep a dead parent's engine alive
    return status


def _check_listen(address: str) -> None:
    parts = urlsplit(address)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise BadInput(f"--listen must look like tcp://HOST:PORT, got {address!r}")


def _read_key(line: bytes) -> bytes:
    try:
        key = bytes.fromhex(json.loads(line)["key"])
    except (ValueError, KeyError, TypeError):
        raise BadInput('--key-stdin expects {"key": "<hex>"} as the first line of stdin') from None
    if len(key) < 16:
        raise BadInput("the session key must be at least 16 bytes")
    return key


def _watch_stdin(parent_gone: threading.Event) -> None:
    """The parent holds our stdin open; end-of-file means it has exited (or been killed)."""
    while sys.stdin.buffer.read(4096):
        pass
    parent_gone.set()


def _public_address(bound: str) -> str:
    """A wildcard bind is reachable by this host's name, which is what a remote client needs."""
    parts = urlsplit(bound)
    if parts.hostname in WILDCARD_HOSTS or parts.netloc.split(":")[0] in WILDCARD_HOSTS:
        return f"tcp://{socket.gethostname()}:{parts.port}"
    return bound


def write_connection_file(path: Path, address: str, key: bytes) -> None:
    """Write {"address", "key", "protocol"} readable by its owner only, atomically.

    The temporary file gets an unpredictable name and is created new, never through a link
    (`O_EXCL | O_NOFOLLOW`), with mode 0600 from the start: nobody can plant a file or a link
    there beforehand to read the key or to have it written elsewhere.
    """
    path = Path(path)
    text = json.dumps({"address": address, "key": key.hex(), "protocol": protocol.PROTOCOL_VERSION}, indent=2)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(temporary, flags, 0o600)
    except OSError as exc:
        raise BadInput(f"cannot write the connection file {path}: {exc}") from None
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise BadInput(f"cannot write the connection file {path}: {exc}") from None


def _remove_connection_file(path: Path, key: bytes) -> None:
    """Remove the file on exit unless another engine has overwritten it meanwhile."""
    try:
        if json.loads(Path(path).read_text()).get("key") == key.hex():
            Path(path).unlink()
    except (OSError, ValueError, AttributeError):
        pass
