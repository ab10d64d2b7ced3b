"""Throwaway certificate authorities and certificates for TLS tests (``openssl``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["issue_cert", "make_ca"]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(where: Path, name: str = "ringcache-test-ca") -> tuple[Path, Path]:
    """A throwaway certificate authority: ``(ca.pem, ca-key.pem)`` in ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    pem, key = where / f"{name}.pem", where / f"{name}-key.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(key), "-out", str(pem),
    )  # fmt: skip
    return pem, key


def issue_cert(ca: tuple[Path, Path], where: Path, name: str) -> tuple[Path, Path]:
    """A certificate with common name ``name`` for 127.0.0.1 and localhost, signed by ``ca``,
    good for servers and clients: ``(cert.pem, key.pem)`` in ``where``."""
    pem, key, csr = where / f"{name}.pem", where / f"{name}-key.pem", where / f"{name}.csr"
    ext = where / f"{name}.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(csr))  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(pem))  # fmt: skip
    return pem, key
