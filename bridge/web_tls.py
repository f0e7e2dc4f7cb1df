"""A self-signed certificate for the web surface, made on first use with the ``cryptography`` package.

Browsers allow the Screen Wake Lock API (a tablet that does not sleep mid-set) only in a secure context: HTTPS, or
plain HTTP from the same machine (localhost). So when the surface listens on a network address it serves HTTPS with
a certificate made here once and kept in ``~/.config/stembridge/web/`` (``$STEMBRIDGE_WEB_DIR`` overrides it). The
browser warns about it the first time; accept it once per device (docs/web-surface.md says how).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

CERT_NAME, KEY_NAME = "cert.pem", "key.pem"
VALID_DAYS = 3650


def web_dir() -> Path:
    """Where the certificate lives: $STEMBRIDGE_WEB_DIR, else ~/.config/stembridge/web."""
    env = os.environ.get("STEMBRIDGE_WEB_DIR")
    return Path(env) if env else Path.home() / ".config" / "stembridge" / "web"


def _names(hosts: list[str]) -> tuple[list, list[str]]:
    from cryptography import x509

    dns, ips = {"localhost", socket.gethostname()}, {"127.0.0.1", "::1"}
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if host:
                dns.add(host)
            continue
        if not ip.is_unspecified:
            ips.add(str(ip))
    if any(h in ("0.0.0.0", "::", "") for h in hosts):  # every address of this machine
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                ips.add(info[4][0].split("%")[0])
        except OSError:
            pass
    names = [x509.DNSName(d) for d in sorted(dns)] + [x509.IPAddress(ipaddress.ip_address(i)) for i in sorted(ips)]
    return names, sorted(dns | ips)


def ensure_certificate(hosts: list[str], directory: str | Path | None = None) -> tuple[Path, Path]:
    """The (certificate, key) PEM files for ``hosts``; made (EC P-256, self-signed, 10 years) when missing or when
    they do not cover every host asked for. Returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(directory) if directory else web_dir()
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    names, wanted = _names(hosts)
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
            have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
            expires = cert.not_valid_after_utc
            if set(wanted) <= have and expires > datetime.datetime.now(datetime.timezone.utc):
                return cert_path, key_path
        except (ValueError, x509.ExtensionNotFound):
            pass  # unreadable or foreign: make a new one
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stembridge web surface")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+) for aiohttp."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_path), str(key_path))
    return context
