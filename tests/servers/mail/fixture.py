"""A real Postfix + Dovecot for the email tests: one container per test session (`clawden-mailserver:test`, built
by bin/setup --tests), on the host's network bound to 127.0.0.1 only, on free high ports. Postfix takes mail for any
`<name>@localhost` (no relay, no DNS) and hands it to Dovecot over LMTP, which keeps it in that name's Maildir
and serves it over IMAP (with IDLE), one password for all.

Missing Docker or image: skip, but fail under CI.
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import smtplib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import docker
import pytest
from docker.errors import ImageNotFound
from testcontainers.core.container import DockerContainer

from clawden.natsserver import free_port
from tests.plugins.docker import _unavailable, owned_test_server

TAG = "clawden-mailserver:test"
HERE = Path(__file__).resolve().parent
PASSWORD = "test-password"
START_TIMEOUT = 30.0


def source_hash() -> str:
    """The label build.sh puts on the image: a hash of the build context's own files."""
    data = b"".join((HERE / name).read_bytes() for name in ("build.sh", "Dockerfile", "entrypoint.sh"))
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class MailServer:
    smtp_port: int  # plain, or STARTTLS
    imap_port: int  # plain
    container: DockerContainer
    smtps_port: int = 0  # implicit TLS
    imaps_port: int = 0  # implicit TLS
    ca_file: Path = Path()  # the server's own certificate (127.0.0.1, localhost), to trust it
    host: str = "127.0.0.1"
    password: str = PASSWORD

    def send(self, message: EmailMessage) -> None:
        """Hand a mail to Postfix as any mail client would (it lands in the recipient's Maildir)."""
        with smtplib.SMTP(self.host, self.smtp_port, timeout=30) as smtp:
            smtp.send_message(message)

    def inbox(self, user: str) -> list[EmailMessage]:
        """Every mail in `<user>@localhost`'s INBOX, oldest first, read over IMAP."""
        imap = imaplib.IMAP4(self.host, self.imap_port, timeout=30)
        try:
            imap.login(user, self.password)
            imap.select("INBOX", readonly=True)
            _, found = imap.uid("search", "ALL")
            out = []
            for uid in found[0].split():
                _, data = imap.uid("fetch", uid, "(BODY.PEEK[])")
                raw = next(part[1] for part in data if isinstance(part, tuple))
                message = BytesParser(policy=policy.default).parsebytes(raw)
                assert isinstance(message, EmailMessage)
                out.append(message)
            return out
        finally:
            imap.logout()

    def refuse(self, rules: dict[str, str]) -> None:
        """Postfix refuses recipients matching each regexp with its answer (`450 4.2.0 try later`); an empty
        dict takes every rule away. The new table holds for every connection after this returns."""
        table = "".join(f"/{pattern}/ {answer}\n" for pattern, answer in rules.items())
        encoded = base64.b64encode(table.encode()).decode()
        result = self.container.get_wrapped_container().exec_run(
            ["sh", "-c", f"echo '{encoded}' | base64 -d > /srv/rules && postfix -c /srv/postfix/etc reload"]
        )
        assert result.exit_code == 0, result.output

    def logs(self) -> str:
        """Dovecot's log and Postfix's (which Postfix writes to a file: it has no syslog here)."""
        out, err = self.container.get_logs()
        postfix = self.container.get_wrapped_container().exec_run(["cat", "/srv/postfix/maillog"]).output
        return (out + err + postfix).decode(errors="replace")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return bool(sock.recv(64))  # both servers greet first
    except OSError:
        return False


@pytest.fixture(scope="session")
def mail_server(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    try:
        image = docker_client.images.get(TAG)
    except ImageNotFound:
        _unavailable(f"image {TAG} is missing; run bin/setup --tests (or `bash tests/servers/mail/build.sh`)")
    if (image.labels or {}).get("dev.clawden.source") != source_hash():
        _unavailable(f"image {TAG} was built from an older context; run `bash tests/servers/mail/build.sh`")
    smtp_port, imap_port, smtps_port, imaps_port = free_port(), free_port(), free_port(), free_port()
    container = (
        owned_test_server(docker_client, TAG, network_mode="host")
        .with_env("SMTP_PORT", str(smtp_port))
        .with_env("IMAP_PORT", str(imap_port))
        .with_env("SMTPS_PORT", str(smtps_port))
        .with_env("IMAPS_PORT", str(imaps_port))
        .with_env("MAIL_PASSWORD", PASSWORD)
    )
    container.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (_answers(smtp_port) and _answers(imap_port)):  # no event says a port listens: ask it
            if time.monotonic() > deadline:
                out, err = container.get_logs()
                raise AssertionError(
                    f"the mail server did not answer within {START_TIMEOUT:.0f}s:\n"
                    f"{(out + err).decode(errors='replace')[-3000:]}"
                )
            time.sleep(0.05)
        ca_file = tmp_path_factory.mktemp("mail-tls") / "cert.pem"
        ca_file.write_bytes(container.get_wrapped_container().exec_run(["cat", "/srv/tls/cert.pem"]).output)
        yield MailServer(smtp_port, imap_port, container, smtps_port, imaps_port, ca_file)
    finally:
        container.stop()
