"""S3 on loopback: moto in server mode, so PLANNER_STORAGE_URI=s3://bucket/... goes through a real S3 API
(s3fs -> aiobotocore -> HTTP) on both sides: this process and the boxes, each with its own credentials."""
from __future__ import annotations

import socket
import uuid

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIASIMCLOUDTEST0001", "AWS_SECRET_ACCESS_KEY": "sim-secret-" + "s3" * 12,
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

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
        self.server.stop()
