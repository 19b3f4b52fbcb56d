"""A host's network meter: a TCP relay on loopback between a box and one endpoint (the object store), counting
the bytes each way, so the simulated Vast bills bandwidth per byte as Vast does (its docs' "Cost Components":
compute, storage and bandwidth, https://docs.vast.ai/documentation/instances/pricing; each offer's
`inet_down_cost` / `inet_up_cost` in $/GB, docs/providers/vast.md "Offers"). Bytes into the box are
`down`, bytes out of it `up`."""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class Meter:
    def __init__(self, endpoint: str):
        parts = urlsplit(endpoint)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.listener.getsockname()[1]}"))
        self.down = self.up = 0  # bytes into / out of the box
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=30)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, "down"), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(chunk))
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
