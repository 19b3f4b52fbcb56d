"""What both fake providers share: a threaded JSON server on 127.0.0.1 with a bearer key, every request
kept (for the secrets checks), and injectable faults (a status and body for the next N calls of a route).

Besides the account key, each instance gets its own instance-scoped key (`issue_instance_key`), which
the provider injects into the container (RunPod `RUNPOD_API_KEY`, "Pod-scoped API key": runpod/docs
pods/templates/environment-variables.mdx; Vast `CONTAINER_API_KEY`, which "can only start, stop, or
destroy that specific instance": vast-ai/docs api-reference/hello-world.mdx). A scoped key is accepted
only on its own instance's routes (`scope_allows`); anywhere else the provider refuses it (`forbidden`).
Rotating the account key (`rotate_key`) leaves the instance keys working, as each is its own key."""
from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.simcloud.box import now


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
        self.instance_keys: dict[str, str] = {}  # instance-scoped key -> the instance id it may act on
        self.ended_by_itself: dict[str, object] = {}  # instance id -> when its own key deleted it (the box ended)
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
                # /logs/...: a pre-signed log URL (Vast's result_url) needs no key
                refused = api.edge_refusal(self.headers.get("User-Agent")) or (
                    None if url.path.startswith("/logs/") else api.refusal(self.headers.get("Authorization"),
                                                                            self.command, url.path))
                if refused is not None:
                    reply = refused
                else:
                    try:
                        reply = api.dispatch(self.command, url.path, query, body, dict(self.headers))
                    except Exception as exc:  # a bug in the fake: a 500 the test will notice
                        reply = Reply(500, {"title": "fake server bug", "detail": repr(exc)})
                    api.note_self_end(self.headers.get("Authorization"), reply)
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

    def forbidden(self) -> Reply:
        return Reply(403, {"title": "Forbidden", "status": 403, "detail": "this key may not act on that resource"})

    def edge_refusal(self, user_agent: str | None) -> Reply | None:
        """The answer of the provider's edge (its CDN) to a client by its User-Agent, before any key is read;
        None: let it through."""
        return None

    def scope_allows(self, instance_id: str, method: str, path: str) -> bool:
        """Whether an instance-scoped key for `instance_id` may make this request (the provider's rule)."""
        return False

    def refusal(self, header: str | None, method: str, path: str) -> Reply | None:
        """None when the request's key may make it; else the provider's answer."""
        if self.authorized(header):
            return None
        token = (header or "").removeprefix("Bearer ")
        with self.lock:
            instance = self.instance_keys.get(token)
        if instance is None:
            return self.unauthorized()
        return None if self.scope_allows(instance, method, path) else self.forbidden()

    def exists(self, instance_id: str) -> bool:
        """Whether the instance still exists (running or stopped)."""
        raise NotImplementedError

    def note_self_end(self, header: str | None, reply: Reply) -> None:
        """A request made with an instance's own key that left the instance gone: the box ended itself, now
        (the drills compare what the supervisor settled with the bill, which stops here)."""
        with self.lock:
            instance = self.instance_keys.get((header or "").removeprefix("Bearer "))
            if instance is not None and reply.status < 300 and instance not in self.ended_by_itself \
                    and not self.exists(instance):
                self.ended_by_itself[instance] = now()

    def issue_instance_key(self, instance_id) -> str:
        key = f"inst-{secrets.token_hex(12)}"
        with self.lock:
            self.instance_keys[key] = str(instance_id)
        return key

    def rotate_key(self) -> str:
        """The account key is replaced (a rotation or revocation): the old one stops working, and the
        new one is returned for the planner's next start."""
        with self.lock:
            self.key = f"{self.key.split('~')[0]}~{secrets.token_hex(4)}"
        return self.key

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
