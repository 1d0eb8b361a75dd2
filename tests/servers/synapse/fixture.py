"""A real Synapse for the Matrix tests: one container per test session (`clawden-synapse:test`, built by
bin/setup --tests), on the host's network bound to 127.0.0.1 only, SQLite, no federation, rate limits raised.

Users are registered through the shared-secret admin API. Missing Docker or image: skip, but fail under CI.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest
from docker.errors import ImageNotFound

from clawden.natsserver import free_port
from tests.plugins.docker import _unavailable, owned_test_server
from tests.servers.synapse.build import TAG, is_current

SERVER_NAME = "clawden.test"
START_TIMEOUT = 60.0

CONFIG = """\
server_name: "{server_name}"
pid_file: /data/homeserver.pid
public_baseurl: "http://127.0.0.1:{port}/"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: /data/homeserver.db
media_store_path: /data/media
max_upload_size: 10M
signing_key_path: /data/signing.key
registration_shared_secret: "{secret}"
macaroon_secret_key: "{macaroon}"
form_secret: "{form}"
report_stats: false
enable_registration: false
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
url_preview_enabled: false
presence:
  enabled: false
enable_metrics: false
rc_message: {{per_second: 1000, burst_count: 1000}}
rc_registration: {{per_second: 1000, burst_count: 1000}}
rc_joins: {{local: {{per_second: 1000, burst_count: 1000}}, remote: {{per_second: 1000, burst_count: 1000}}}}
rc_invites:
  per_room: {{per_second: 1000, burst_count: 1000}}
  per_user: {{per_second: 1000, burst_count: 1000}}
  per_issuer: {{per_second: 1000, burst_count: 1000}}
rc_login:
  address: {{per_second: 1000, burst_count: 1000}}
  account: {{per_second: 1000, burst_count: 1000}}
  failed_attempts: {{per_second: 1000, burst_count: 1000}}
rc_room_creation: {{per_second: 1000, burst_count: 1000}}
rc_media_create: {{per_second: 1000, burst_count: 1000}}
"""


@dataclass(frozen=True)
class Account:
    user_id: str
    token: str
    device_id: str
    password: str


class Synapse:
    def __init__(self, url: str, secret: str, data: Path) -> None:
        self.url = url
        self.secret = secret
        self.data = data
        self.server_name = SERVER_NAME

    def register(self, name: str, *, admin: bool = False, displayname: str | None = None) -> Account:
        """A new user (a unique name per call: Synapse refuses a name twice), logged in on one device."""
        user = f"{name.lower()}{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(12)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            nonce = client.get("/_synapse/admin/v1/register").raise_for_status().json()["nonce"]
            mac = hmac.new(
                self.secret.encode(),
                b"\0".join([nonce.encode(), user.encode(), password.encode(), b"admin" if admin else b"notadmin"]),
                hashlib.sha1,
            ).hexdigest()
            body = (
                client.post(
                    "/_synapse/admin/v1/register",
                    json={
                        "nonce": nonce,
                        "username": user,
                        "password": password,
                        "admin": admin,
                        "mac": mac,
                        "displayname": displayname or name,
                    },
                )
                .raise_for_status()
                .json()
            )
        return Account(body["user_id"], body["access_token"], body["device_id"], password)


def signing_key() -> str:
    seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    return f"ed25519 a_test {seed}\n"


@pytest.fixture(scope="session")
def synapse(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    try:
        docker_client.images.get(TAG)
    except ImageNotFound:
        _unavailable(f"image {TAG} is missing; run bin/setup --tests (or `python -m tests.servers.synapse.build`)")
    if not is_current(TAG):
        _unavailable(f"image {TAG} was built from an older Dockerfile; run `python -m tests.servers.synapse.build`")
    data = tmp_path_factory.mktemp("synapse")
    port = free_port()
    secret = secrets.token_hex(16)
    (data / "homeserver.yaml").write_text(
        CONFIG.format(
            server_name=SERVER_NAME,
            port=port,
            secret=secret,
            macaroon=secrets.token_hex(16),
            form=secrets.token_hex(16),
        )
    )
    (data / "signing.key").write_text(signing_key())
    container = owned_test_server(
        docker_client, TAG, network_mode="host", user=f"{os.getuid()}:{os.getgid()}"
    ).with_volume_mapping(str(data), "/data", "rw")
    container.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # no event says Synapse listens: ask its /versions until it answers
            try:
                if httpx.get(f"{url}/_matrix/client/versions", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                logs = b"".join(container.get_logs()).decode(errors="replace")
                raise AssertionError(f"Synapse did not answer within {START_TIMEOUT:.0f}s:\n{logs[-3000:]}")
            time.sleep(0.1)
        yield Synapse(url, secret, data)
    finally:
        container.stop()
