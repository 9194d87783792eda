"""A real Eclipse Mosquitto broker in its own process, for the MQTT plugins' tests.

The broker gets a generated config in a private directory and three listeners on
free ports of 127.0.0.1:

- ``port``: anonymous, plain MQTT;
- ``auth_port``: plain MQTT with a password file (``USER`` / ``PASSWORD``), no anonymous;
- ``tls_port``: TLS with a test CA made here; a client certificate signed by that CA is
  required and is the client's identity;
- ``acl_port``: anonymous, plain MQTT, where Mosquitto's dynamic security plugin refuses
  every subscription matching ``FORBIDDEN`` (SUBACK 0x87 with MQTT 5, 0x80 with 3.1.1);
  None when the broker has no such plugin (Debian's package ships it).

Persistence is on (in the same directory), so a ``restart()`` keeps persistent sessions
and the QoS 1 messages queued for them, as a broker restart in a plant would.
The broker comes from Debian's package: ``apt-get install -y mosquitto``.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.processes import terminate

USER = "spark"
PASSWORD = "s3cret-Test-pw"  # a test secret: tests assert it never appears in any output
INSTALL_HINT = "install it with: apt-get update && apt-get install -y mosquitto"
FORBIDDEN = "forbidden/#"
"""Subscriptions matching this filter are refused on ``acl_port``."""
_DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"


def find_program(name: str = "mosquitto") -> str:
    """A broker program (Debian installs the broker in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(f"{name} is not installed; {INSTALL_HINT}")
    return found


def find_dynsec_plugin() -> Path | None:
    """Mosquitto's dynamic security plugin (Debian: /usr/lib/<arch>/), if installed."""
    for pattern in ("/usr/lib/*/", "/usr/lib/", "/usr/local/lib/", "/usr/lib/*/mosquitto/"):
        found = sorted(Path("/").glob(pattern.lstrip("/") + _DYNSEC_PLUGIN))
        if found:
            return found[0]
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Certs:
    """PEM files of a test PKI: a CA, a server certificate for 127.0.0.1/localhost, and a
    client certificate, all signed by the CA; ``other_ca`` signed nothing here."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_certs(directory: Path) -> Certs:
    """Generate the test PKI with ``cryptography`` (EC keys: fast to make)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, fname: str) -> Path:
        path = directory / fname
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return path

    def write_cert(cert: x509.Certificate, fname: str) -> Path:
        path = directory / fname
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def builder(
        subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(cn, name(cn), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = make_ca("spark-sinks test CA")
    _, other_cert = make_ca("spark-sinks unrelated CA")

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = builder(cn, ca_cert.subject, key).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if san:
            alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return write_cert(cert, f"{cn}.crt"), write_key(key, f"{cn}.key")

    server_cert, server_key = leaf("server", ExtendedKeyUsageOID.SERVER_AUTH, san=True)
    client_cert, client_key = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, san=False)
    return Certs(
        ca=write_cert(ca_cert, "ca.crt"),
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        other_ca=write_cert(other_cert, "other-ca.crt"),
    )


class Mosquitto:
    """One broker process; ``start``/``stop``/``restart``/``kill`` keep ports and state."""

    host = "127.0.0.1"

    def __init__(self, directory: Path, certs: Certs) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.certs = certs
        self.port = free_port()
        self.auth_port = free_port()
        self.tls_port = free_port()
        self.dynsec = find_dynsec_plugin()
        self.acl_port = free_port() if self.dynsec is not None else None
        self.log_file = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    def new_ports(self) -> None:
        """Other free ports: another process took one between ``free_port`` and the bind."""
        self.port, self.auth_port, self.tls_port = free_port(), free_port(), free_port()
        if self.acl_port is not None:
            self.acl_port = free_port()
        self._write_config()

    def _write_config(self) -> None:
        pwfile = self.dir / "passwords"
        pwfile.touch(mode=0o600)
        subprocess.run(
            [find_program("mosquitto_passwd"), "-b", str(pwfile), USER, PASSWORD],
            check=True,
            capture_output=True,
        )
        data = self.dir / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        c = self.certs
        lines = [
            # as root the broker would switch to the "mosquitto" user, which cannot read
            # this private directory; stay the user who runs the tests
            f"user {getpass.getuser()}",
            "per_listener_settings true",
            "persistence true",
            f"persistence_location {data}/",
            # tests queue thousands of QoS 1 messages for an offline persistent session
            "max_queued_messages 1000000",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"listener {self.auth_port} {self.host}",
            "allow_anonymous false",
            f"password_file {pwfile}",
            f"listener {self.tls_port} {self.host}",
            f"cafile {c.ca}",
            f"certfile {c.server_cert}",
            f"keyfile {c.server_key}",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            *self._acl_listener(),
        ]
        self.config_file = self.dir / "mosquitto.conf"
        self.config_file.write_text("\n".join(lines) + "\n")

    def _acl_listener(self) -> list[str]:
        """The ``acl_port`` listener's config lines, with its dynamic security file."""
        if self.acl_port is None:
            return []
        role = {
            "rolename": "limited",
            "acls": [
                {"acltype": "subscribePattern", "topic": FORBIDDEN, "priority": 0, "allow": False}
            ],
        }
        allow_all = ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")
        dynsec = {
            "defaultACLAccess": dict.fromkeys(allow_all, True),
            "clients": [],
            "groups": [{"groupname": "anonymous", "roles": [{"rolename": "limited"}]}],
            "roles": [role],
            "anonymousGroup": "anonymous",
        }
        path = self.dir / "dynamic-security.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dynsec, fh)
        return [
            f"listener {self.acl_port} {self.host}",
            "allow_anonymous true",
            f"plugin {self.dynsec}",
            f"plugin_opt_config_file {path}",
        ]

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            [find_program(), "-c", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        waiting = [self.port, self.auth_port, self.tls_port]
        if self.acl_port is not None:
            waiting.append(self.acl_port)
        while waiting:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode}; log:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not listen within {timeout}s:\n{self.log()}")
            try:
                socket.create_connection((self.host, waiting[0]), timeout=0.5).close()
                waiting.pop(0)
            except OSError:
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        """A clean stop: the broker saves its persistent sessions and queued messages."""
        terminate(self.proc)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: what was not saved yet is lost, as in a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


@contextmanager
def mosquitto_broker(directory: Path, certs: Certs | None = None) -> Iterator[Mosquitto]:
    broker = Mosquitto(directory, certs or make_certs(directory / "pki"))
    for attempt in range(3):
        try:
            broker.start()
            break
        except RuntimeError:
            # a port taken by another process (tests of other sessions run alongside)
            if attempt == 2 or "Address already in use" not in broker.log():
                raise
            broker.new_ports()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Client:
    """A paho-mqtt 2.x client for tests: ``connect`` raises when the broker refuses, received
    messages are collected (paho's network thread appends under ``_lock``)."""

    def __init__(
        self,
        broker: Mosquitto,
        client_id: str = "",
        *,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        client_cert: bool = True,
        clean: bool = True,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.broker = broker
        self.port = port or (broker.tls_port if tls else broker.port)
        self._mqtt = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean,
            protocol=mqtt.MQTTv311,
        )
        self._mqtt.max_inflight_messages_set(1000)  # for publish_many
        if username is not None:
            self._mqtt.username_pw_set(username, password)
        if tls:
            c = broker.certs
            cert = (str(c.client_cert), str(c.client_key)) if client_cert else (None, None)
            self._mqtt.tls_set(ca_certs=str(c.ca), certfile=cert[0], keyfile=cert[1])
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._connected = threading.Event()
        self._refused: str | None = None
        self.topics: list[str] = []
        """The filters subscribed to, in order."""
        self._mqtt.on_connect = self._on_connect
        self._mqtt.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self._messages.append(Received(msg.topic, msg.payload, msg.qos, bool(msg.retain)))

    def connect(self, timeout: float = 10.0) -> Client:
        self._mqtt.connect(self.broker.host, self.port, keepalive=30)
        self._mqtt.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise TimeoutError(f"no CONNACK from the broker on port {self.port}")
        if self._refused is not None:
            self.close()
            raise ConnectionRefusedError(self._refused)
        return self

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        self._mqtt.on_subscribe = lambda *args: done.set()
        self._mqtt.subscribe(topic, qos)
        if not done.wait(10):
            raise TimeoutError(f"no SUBACK for {topic!r}")
        self.topics.append(topic)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait until the broker has it (PUBACK at QoS 1)."""
        self._mqtt.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def publish_many(self, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
        """Publish without waiting for each acknowledgement, then wait for all of them."""
        infos = [self._mqtt.publish(t, p, qos=qos) for t, p in messages]
        for info in infos:
            info.wait_for_publish(30)

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """At least ``count`` messages, or all there are once ``timeout`` has passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages
            if len(got) >= count:
                return got
            time.sleep(0.02)
        return self.messages

    def close(self) -> None:
        self._mqtt.disconnect()
        self._mqtt.loop_stop()
