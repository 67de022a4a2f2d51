"""A local AWS endpoint: moto's server on 127.0.0.1, in this process.

One HTTP endpoint serves boto3 clients, the aws CLI and s5cmd alike; running it in process
lets the Lambda runner and the sandbox agent hook moto's backends directly.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import boto3
import requests
from moto.server import ThreadedMotoServer

from local import iam, iam_http, lambda_runner

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalCloud:
    """Start with `start()`; every boto3 client in this process then talks to it."""

    def __init__(
        self, region: str = "us-west-2", port: int | None = None, *, enforce_iam: bool = True
    ) -> None:
        self.region = region
        # Lambdas' calls authorized against their roles (local/iam.py); the harness keeps full rights
        self.enforce_iam = enforce_iam
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def environment(self) -> dict[str, str]:
        return {
            **FAKE_CREDENTIALS,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            # moto's Step Functions interpreter calls other services on localhost:MOTO_PORT
            "MOTO_PORT": str(self.port),
        }

    def start(self) -> LocalCloud:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # the interpreter logs every caught task failure with its whole program: keep failures only
        logging.getLogger("moto.stepfunctions").setLevel(logging.CRITICAL)
        for key, value in self.environment.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        response = requests.post(
            f"{self.endpoint}/moto-api/config",
            json={"stepfunctions": {"execute_state_machine": True}},
            timeout=10,
        )
        response.raise_for_status()
        lambda_runner.install()
        if self.enforce_iam:
            iam.install()
            iam_http.wrap_server(self._server)  # the instance scripts' own S3 requests
        return self

    def stop(self) -> None:
        lambda_runner.uninstall()
        if self.enforce_iam:
            iam.uninstall()
        if self._server is not None:
            self._server.stop()
            self._server = None
        for key, old in self._saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old

    def reset(self) -> None:
        requests.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()
        requests.post(
            f"{self.endpoint}/moto-api/config",
            json={"stepfunctions": {"execute_state_machine": True}},
            timeout=10,
        ).raise_for_status()

    def session(self) -> boto3.Session:
        return boto3.Session(region_name=self.region, **{k.lower(): v for k, v in FAKE_CREDENTIALS.items()})

    def client(self, service: str) -> Any:
        return self.session().client(service, endpoint_url=self.endpoint)  # type: ignore[call-overload]
