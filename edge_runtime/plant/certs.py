"""A self-signed application certificate for the station's OPC UA server (or a test client), as
OPC 10000-6 asks: the application URI in the subject alternative names, RSA 2048, SHA-256.
A plant with its own certificate authority issues its own; this is for the rest."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from sortline.hardware.files import atomic_file


def make_certificate(folder: Path, application_uri: str, name: str, client: bool = False,
                     days: int = 3650) -> tuple[Path, Path]:
    """``folder/cert.der`` and ``folder/key.pem`` (the key readable by its owner only)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    host = socket.gethostname()
    names = [x509.UniformResourceIdentifier(application_uri), x509.DNSName(host), x509.DNSName("localhost"),
             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH,
                                                               ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = generate_self_signed_app_certificate(key, name, {"organizationName": "sortline"}, names, usage, days)
    cert_path, key_path = folder / "cert.der", folder / "key.pem"
    with atomic_file(key_path) as tmp:
        tmp.write_bytes(dump_private_key_as_pem(key))
        tmp.chmod(0o600)
    with atomic_file(cert_path) as tmp:
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return cert_path, key_path
