"""A local HTTP server that answers like RunPod's GraphQL and Vast's bundle search from recorded payloads.

The demo (and anyone without keys or network) points PLANNER_RUNPOD_URL / PLANNER_VAST_URL here, so
the real provider code parses a recorded book. It binds to 127.0.0.1 on a free port.
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

RECORDED = {
    "/graphql": "recorded_runpod_gpu_types.json",
    "/api/v0/bundles/": "recorded_vast_bundles.json",
}
RECORDED_LABEL = ("recorded snapshot bundled with planner (reference fixtures: real RunPod gpuTypes fields and "
                  "one real Vast capture, the other offers illustrative)")


def recorded_payload(path: str) -> bytes:
    return resources.files("pricing").joinpath("data", RECORDED[path]).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        if path not in RECORDED:
            self.send_error(404)
            return
        body = recorded_payload(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class ReplayServer:
    """Context manager: `with ReplayServer() as url:` serves both providers under `url`."""

    def __enter__(self) -> str:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
