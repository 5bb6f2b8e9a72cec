"""Key material on disk: the consortium's public list, each party's secret keys, the
coordinator's TLS certificate and the CA that signs it.

Who holds what (README, "Deploying"):
- every party and the coordinator hold `consortium.toml` (public): the coordinator's address,
  and per party its name, its Ed25519 identity key (signs its job keys and replies, see
  crypto.keys) and its node-authentication key (lets its node connect to the coordinator);
- every party holds `ca.pem` (public), the certificate its node checks the coordinator
  against (TLS, server authentication);
- a party's own folder holds its private identity key and private node-auth key (mode 0600);
- the coordinator holds its TLS key; the CA's private key is the operator's, kept offline.

`init_consortium` makes all of it in one place, a convenience for a loopback trial or an
operator who hands each party its folder over a secure channel. A party that does not want
the operator ever to hold its secrets makes its own (`party_keys`) and sends only the public
halves to the operator, who adds them to consortium.toml.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from fedsynth.crypto.keys import Identity, public_identity
from fedsynth.errors import InputError

CONSORTIUM = "consortium.toml"
CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
IDENTITY_KEY = "identity.key"
NODE_KEY, NODE_PUB = "node-auth.key", "node-auth.pub"
CERT_DAYS = 825


class KeyFileError(InputError):
    """A key file that is missing, unreadable or of the wrong kind; says which and why."""


@dataclass(frozen=True)
class Consortium:
    """The consortium's public list, as every member holds it."""

    coordinator: str  # host:port the parties dial
    identities: dict[str, bytes]  # party name -> raw Ed25519 public identity key
    node_keys: dict[str, str]  # party or key-holder name -> OpenSSH public key of its node
    # key holders of the he channel (a role of its own, never a party, never the
    # coordinator): name -> raw Ed25519 public identity key
    key_holders: dict[str, bytes] = field(default_factory=dict)

    def to_toml(self) -> str:
        lines = ["# The consortium's public list: every party and the coordinator hold a copy.",
                 f'coordinator = "{self.coordinator}"', ""]
        for table, members in (("parties", self.identities), ("key_holders", self.key_holders)):
            for name in members:
                lines += [f'[{table}."{name}"]',
                          f'identity = "{base64.b64encode(members[name]).decode()}"',
                          f'node_key = "{self.node_keys.get(name, "")}"', ""]
        return "\n".join(lines)

    @classmethod
    def load(cls, path: Path) -> Consortium:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise KeyFileError(f"{path}: cannot read the consortium list ({exc})") from None
        parties = doc.get("parties")
        if not isinstance(doc.get("coordinator"), str) or not isinstance(parties, dict) \
                or not parties:
            raise KeyFileError(f"{path}: needs `coordinator = \"host:port\"` and a "
                               "[parties.NAME] table per party")
        holders = doc.get("key_holders", {})
        if not isinstance(holders, dict):
            raise KeyFileError(f"{path}: `key_holders` must be [key_holders.NAME] tables")
        clash = sorted(set(parties) & set(holders))
        if clash:
            raise KeyFileError(f"{path}: {clash} listed both as a party and as a key holder; "
                               "a key holder must be a member of its own")
        node_keys: dict[str, str] = {}
        identities = _members(path, "party", parties, node_keys)
        key_holders = _members(path, "key holder", holders, node_keys)
        return cls(doc["coordinator"], identities, node_keys, key_holders)


def _members(path: Path, what: str, table: dict[str, Any], node_keys: dict[str, str],
             ) -> dict[str, bytes]:
    """Each member's raw identity key (and its node key into `node_keys`)."""
    identities = {}
    for name, entry in table.items():
        try:
            raw = base64.b64decode(str(entry["identity"]), validate=True)
        except (KeyError, TypeError, ValueError):
            raw = b""
        if len(raw) != 32:
            raise KeyFileError(f"{path}: {what} {name!r} needs `identity`, a base64 "
                               "Ed25519 public key (32 bytes)")
        identities[name] = raw
        node_keys[name] = str(entry.get("node_key", ""))
    return identities


def _write_secret(path: Path, data: bytes) -> None:
    """A private key file readable by its owner only, created so (never widened later)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_identity(path: Path, identity: Identity) -> None:
    sk = Ed25519PrivateKey.from_private_bytes(identity.private)
    _write_secret(path, sk.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                         ser.NoEncryption()))


def read_identity(path: Path) -> bytes:
    """A party's raw private identity key from its PEM file."""
    try:
        sk = ser.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: cannot read the identity key ({exc})") from None
    if not isinstance(sk, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return sk.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())


def node_key_pair(folder: Path) -> str:
    """A node-authentication key pair (ECDSA P-384, OpenSSH format, as Flower's node
    authentication takes it); returns the public key's OpenSSH line."""
    sk = ec.generate_private_key(ec.SECP384R1())
    _write_secret(folder / NODE_KEY, sk.private_bytes(ser.Encoding.PEM,
                                                      ser.PrivateFormat.OpenSSH,
                                                      ser.NoEncryption()))
    pub = sk.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    (folder / NODE_PUB).write_text(pub + "\n", encoding="utf-8")
    return pub


def party_keys(folder: Path, name: str) -> tuple[bytes, str]:
    """A party's own secrets in `folder` (identity and node-auth keys); returns the public
    halves (identity key, node key line) to send to the operator."""
    folder.mkdir(parents=True, exist_ok=True)
    identity = Identity.generate(name)
    write_identity(folder / IDENTITY_KEY, identity)
    return identity.public, node_key_pair(folder)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("fedsynth consortium CA"))
            .issuer_name(_name("fedsynth consortium CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA384()))
    (folder / CA_CERT).write_bytes(cert.public_bytes(ser.Encoding.PEM))
    _write_secret(folder / CA_KEY, key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                                     ser.NoEncryption()))
    return cert, key


def server_certificate(folder: Path, host: str, ca: x509.Certificate,
                       ca_key: ec.EllipticCurvePrivateKey) -> None:
    """The coordinator's TLS certificate for `host` (a name or an IP address), signed by
    the CA; localhost and 127.0.0.1 are always included for loopback trials."""
    key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(host)
        if str(ip) != "127.0.0.1":
            names.append(x509.IPAddress(ip))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA384()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SERVER_CERT).write_bytes(cert.public_bytes(ser.Encoding.PEM))
    _write_secret(folder / SERVER_KEY, key.private_bytes(ser.Encoding.PEM,
                                                         ser.PrivateFormat.PKCS8,
                                                         ser.NoEncryption()))


def init_consortium(out: Path, coordinator: str, parties: list[str],
                    key_holders: list[str] | None = None) -> Consortium:
    """Everything a consortium needs, in `out` (which must not exist yet):
    out/consortium.toml, out/ca.pem, out/ca.key, out/coordinator/{server.pem, server.key,
    consortium.toml}, and per party and per key holder (the he channel's)
    out/NAME/{identity.key, node-auth.key, node-auth.pub, ca.pem, consortium.toml}."""
    key_holders = list(key_holders or [])
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise KeyFileError(f"coordinator address {coordinator!r}: give HOST:PORT, e.g. "
                           "link.example.org:8000 or 127.0.0.1:8000")
    if len(set(parties)) != len(parties) or len(parties) < 2:
        raise KeyFileError(f"parties {parties}: give two or more distinct names")
    if set(key_holders) & set(parties) or len(set(key_holders)) != len(key_holders):
        raise KeyFileError(f"key holders {key_holders}: give distinct names that are not "
                           "parties' names (a key holder is a member of its own)")
    bad = [p for p in [*parties, *key_holders] if not p or p in ("coordinator",) or "/" in p
           or p.startswith(".") or '"' in p]
    if bad:
        raise KeyFileError(f"party names {bad}: use plain names (no '/', quotes or leading "
                           "dot; 'coordinator' is taken)")
    out.mkdir(parents=True, exist_ok=False)
    ca, ca_key = make_ca(out)
    server_certificate(out / "coordinator", host, ca, ca_key)
    identities, node_keys, holders = {}, {}, {}
    for name in parties:
        identities[name], node_keys[name] = party_keys(out / name, name)
    for name in key_holders:
        holders[name], node_keys[name] = party_keys(out / name, name)
    cons = Consortium(coordinator, identities, node_keys, holders)
    text = cons.to_toml()
    members = [*parties, *key_holders]
    for folder in [out, out / "coordinator", *(out / p for p in members)]:
        (folder / CONSORTIUM).write_text(text, encoding="utf-8")
    for name in members:
        (out / name / CA_CERT).write_bytes((out / CA_CERT).read_bytes())
    return cons


def check_identity(private: bytes, name: str, consortium: Consortium, where: Path) -> None:
    """The party's private key is the one the consortium lists under its name."""
    if consortium.identities.get(name) != public_identity(private):
        raise KeyFileError(f"{where}: this identity key is not the one consortium.toml lists "
                           f"for party {name!r}")
