"""S3 on loopback: moto in server mode, so PLANNER_STORAGE_URI=s3://bucket/... goes through a real S3 API
(s3fs -> aiobotocore -> HTTP) on both sides: this process and the boxes, each with its own credentials.

A test can hold writes (`hold`): a matching request waits in the server, as an upload to a slow or
stalled store waits, until the test lets it go; it is then answered 503 SlowDown (S3's "reduce your
request rate"), so nothing it carried is stored. A job cannot report DONE while its checkpoint upload
is pending (jobs.checkpoint waits for it), so a held upload pins a job mid-run for as long as a test
needs, on any machine speed.

A test can also take the store down (`outage`): for a while every request, read or write, from this
process or a box (or every one on some paths), is refused: answered 503 ServiceUnavailable (S3's "retry later", botocore's 5xx), or its
connection reset before any answer (what a store that went away looks like: botocore's ConnectionClosedError
or EndpointConnectionError). Nothing a refused request carried is stored."""
from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIASIMCLOUDTEST0001", "AWS_SECRET_ACCESS_KEY": "sim-secret-" + "s3" * 12,
               "AWS_DEFAULT_REGION": "us-east-1"}
SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
UNAVAILABLE = b"<Error><Code>ServiceUnavailable</Code><Message>Service is unable to handle request.</Message></Error>"
OUTAGE_MODES = ("503", "reset")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Hold:
    """Writes whose path `matches` wait until `release`; `caught` lists the paths seen waiting."""

    def __init__(self, matches: Callable[[str], bool]):
        self.matches = matches
        self.caught: list[str] = []
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()


class S3Server:
    def __init__(self):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.holds: list[Hold] = []
        self.outages: list[tuple[float, str, Callable[[str], bool]]] = []  # (until, mode, paths), overlapping
        self.refused = 0
        self.port = free_port()
        moto = DomainDispatcherApplication(create_backend_app)
        self.server = make_server("127.0.0.1", self.port, self._holding(moto), threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _holding(self, app):
        def wsgi(environ, start_response):
            now, path = time.monotonic(), environ.get("PATH_INFO", "")
            down = [mode for until, mode, paths in list(self.outages) if now < until and paths(path)]
            if down:
                self.refused += 1
                if down[0] == "reset":  # the connection drops before any answer (werkzeug drops the
                    environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)  # write below: a ConnectionError)
                body = b"" if environ["REQUEST_METHOD"] == "HEAD" else UNAVAILABLE
                start_response("503 Service Unavailable", [("Content-Type", "application/xml"),
                                                          ("Content-Length", str(len(UNAVAILABLE)))])
                return [body]
            if environ["REQUEST_METHOD"] in ("PUT", "POST"):
                path = environ.get("PATH_INFO", "")
                for hold in list(self.holds):
                    if not hold.released.is_set() and hold.matches(path):
                        hold.caught.append(path)
                        hold.released.wait()
                        start_response("503 Slow Down", [("Content-Type", "application/xml")])
                        return [SLOW_DOWN]
            return app(environ, start_response)
        return wsgi

    def hold(self, matches: Callable[[str], bool]) -> Hold:
        hold = Hold(matches)
        self.holds.append(hold)
        return hold

    def outage(self, seconds: float, mode: str = "503", paths: Callable[[str], bool] | None = None) -> None:
        """Refuse every request (or those whose path `paths` matches: a store whose data is spread over
        several servers, one of them down) for `seconds` from now, the `mode` way (OUTAGE_MODES), beside any
        outage under way; `seconds` 0 ends them all."""
        if mode not in OUTAGE_MODES:
            raise ValueError(f"outage mode {mode!r}: one of {OUTAGE_MODES}")
        now = time.monotonic()
        self.outages = [o for o in self.outages if o[0] > now] + [(now + seconds, mode, paths or (lambda path: True))]
        if seconds <= 0:
            self.outages = []

    def release_all(self) -> None:
        for hold in self.holds:
            hold.release()
        self.holds.clear()

    def env(self) -> dict[str, str]:
        """What a lab's shell would export for this store: keys, region and the endpoint."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def bucket(self) -> str:
        import boto3

        name = f"planner-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.release_all()
        self.outages = []
        self.server.shutdown()
        self.thread.join()
