"""What both fake providers share: a threaded JSON server on 127.0.0.1 with a bearer key, every request
kept (for the secrets checks), and injectable faults (a status and body for the next N calls of a route)."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Fault:
    route: str
    status: int
    body: dict | str
    times: int = 1
    headers: dict | None = None


class Reply:
    """A route's answer: JSON (status, body, headers), or a stream of SSE lines."""

    def __init__(self, status: int, body=None, headers: dict | None = None, stream=None):
        self.status, self.body, self.headers, self.stream = status, body, headers or {}, stream


class FakeServer:
    key: str

    def __init__(self, key: str):
        self.key = key
        self.requests: list[dict] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                with api.lock:
                    api.requests.append({"method": self.command, "path": url.path, "query": query, "body": body,
                                         "raw": raw.decode(errors="replace"), "headers": dict(self.headers)})
                if not url.path.startswith("/logs/") and not api.authorized(self.headers.get("Authorization")):
                    # /logs/...: a pre-signed log URL (Vast's result_url) needs no key
                    reply = api.unauthorized()
                else:
                    try:
                        reply = api.dispatch(self.command, url.path, query, body, dict(self.headers))
                    except Exception as exc:  # a bug in the fake: a 500 the test will notice
                        reply = Reply(500, {"title": "fake server bug", "detail": repr(exc)})
                if reply.stream is not None:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    try:
                        for chunk in reply.stream:
                            self.wfile.write(chunk.encode())
                            self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                payload = b"" if reply.body is None else (reply.body.encode() if isinstance(reply.body, str)
                                                          else json.dumps(reply.body).encode())
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, str(value))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    # ------------------------------------------------------------------ for subclasses

    def authorized(self, header: str | None) -> bool:
        return header == f"Bearer {self.key}"

    def unauthorized(self) -> Reply:
        return Reply(401, {"title": "Unauthorized", "status": 401, "detail": "invalid API key"})

    def route(self, method: str, path: str, query: dict, body, headers: dict) -> tuple[str, Reply]:
        raise NotImplementedError

    def dispatch(self, method, path, query, body, headers) -> Reply:
        name, handler = self.route(method, path, query, body, headers)
        fault = self.take_fault(name)
        if fault is not None:
            return Reply(fault.status, fault.body, fault.headers)
        return handler()

    # ------------------------------------------------------------------ faults and inspection

    def inject(self, route: str, status: int, body: dict | str, times: int = 1, headers: dict | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(route, status, body, times, headers))

    def take_fault(self, route: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.route == route and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def everything_sent(self) -> str:
        """Every request as sent, but the Authorization header (which must carry the key)."""
        with self.lock:
            return "\n".join(r["raw"] + r["path"] + json.dumps(r["query"]) + json.dumps(
                {k: v for k, v in r["headers"].items() if k.lower() != "authorization"}) for r in self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
