"""A local S3-compatible server for tests and benchmarks: moto's server on 127.0.0.1.

    with S3Server() as s3:
        env = {**os.environ, **s3.env}            # what a child process (the `rp` CLI) needs
        index_dir = s3.uri("index")               # s3://<bucket>/index

`.env` holds the standard AWS_* variables that boto3 and LanceDB's object_store both read, pointed at
the local server over plain http. moto keeps everything in memory, so a server is cheap to start (~1-2 s)
and its data dies with it.

With `auth=True` (the default) the server checks signatures as S3 does: an IAM user with an access key
is created first, and a request signed with any other key is refused (SignatureDoesNotMatch or
InvalidAccessKeyId), so wrong credentials can be tested. With `auth=False` any key is accepted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """`moto_server` in its own process group, with one bucket created; stopped (group and all) on exit."""

    def __init__(self, bucket: str | None = None, log: Path | None = None, auth: bool = True) -> None:
        self.bucket = bucket or f"rp-test-{uuid.uuid4().hex[:8]}"
        self.port = 0
        self.endpoint = ""
        self.auth = auth
        self.access_key_id, self.secret_access_key = "testing", "testing"
        self._log_path = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment a client needs: boto3 and Lance (object_store) both read these names."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            # object_store refuses plain http unless told; moto serves http only.
            "AWS_ALLOW_HTTP": "true",
            # moto answers path-style requests (http://127.0.0.1:port/bucket/key).
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
            # No instance-metadata lookups, no shared config files from the machine.
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def uri(self, prefix: str = "") -> str:
        prefix = prefix.strip("/")
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"

    def client(self, service: str = "s3"):
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def _require_signatures(self) -> None:
        """An IAM user allowed everything, with an access key; from then on only that key is accepted. moto
        lets the next N requests through unsigned (POST /moto-api/reset-auth), here the three that make it."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth", data=b"3", method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=5):
            pass
        iam = self.client("iam")
        iam.create_user(UserName="rp-test")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="rp-test", PolicyName="everything", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="rp-test")["AccessKey"]
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]

    def __enter__(self) -> S3Server:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        out = open(self._log_path, "wb") if self._log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so exit can stop it and anything it forks
        )
        if out is not subprocess.DEVNULL:
            out.close()
        try:
            self._wait_until_up()
            if self.auth:
                self._require_signatures()
            self.client().create_bucket(Bucket=self.bucket)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _wait_until_up(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._process.returncode} before answering")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is up
            except OSError:
                if time.monotonic() > deadline:
                    message = f"moto_server did not answer on {self.endpoint} in {START_TIMEOUT:.0f} s"
                    raise RuntimeError(message) from None
                time.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
