"""Byte forwarder between a TCP port and a Unix socket (local/sandbox/own_host.py).

forward.py unix-to-tcp SOCKET PORT   listen on SOCKET, connect each client to 127.0.0.1:PORT
forward.py tcp-to-unix PORT SOCKET   listen on 127.0.0.1:PORT, connect each client to SOCKET
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (sink, source):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def serve(listener: socket.socket, connect: object) -> None:
    while True:
        client, _ = listener.accept()
        try:
            upstream = connect()  # type: ignore[operator]
        except OSError:
            client.close()
            continue
        threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()


def main(argv: list[str]) -> None:
    mode, first, second = argv
    if mode == "unix-to-tcp":
        path, port = first, int(second)
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(128)
        serve(listener, lambda: socket.create_connection(("127.0.0.1", port)))
    elif mode == "tcp-to-unix":
        port, path = int(first), second
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)

        def connect() -> socket.socket:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(path)
            return upstream

        serve(listener, connect)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
