"""The cluster's certificates: one CA, one certificate per node (SAN = the node's address).

Agents talk to each other (migrations) over TCP with mutual TLS; the CA signs every node's
certificate. Made with the openssl command (present on every Debian), P-256 keys, idempotent.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import tempfile
from pathlib import Path

DAYS = "3650"


class PkiError(Exception):
    pass


def _openssl(*args: str) -> None:
    res = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {res.stderr.strip()[-300:]}")


def ensure_ca(pki_dir: Path, name: str = "vzfleet cluster CA") -> tuple[Path, Path]:
    """(ca.pem, ca.key) under pki_dir, created once."""
    pki_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_pem, ca_key = pki_dir / "ca.pem", pki_dir / "ca.key"
    if not (ca_pem.exists() and ca_key.exists()):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(ca_key), "-out", str(ca_pem), "-days", DAYS, "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        ca_key.chmod(0o600)
    return ca_pem, ca_key


def issue_node_cert(ca: tuple[Path, Path], node: str, address: str, tls_dir: Path) -> Path:
    """tls_dir/{ca.pem,node.pem,node.key} for `node`, valid as server and client; idempotent."""
    ipaddress.ip_address(address)  # refuse anything but an address
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem, key = tls_dir / "node.pem", tls_dir / "node.key"
    ca_pem, ca_key = ca
    if pem.exists() and key.exists() and (tls_dir / "ca.pem").exists() \
            and (tls_dir / "ca.pem").read_bytes() == ca_pem.read_bytes():
        return tls_dir
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "node.csr", Path(tmp) / "ext.cnf"
        ext.write_text(f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth,clientAuth\n"
                       "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyAgreement\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={node}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(pem), "-days", DAYS, "-extfile", str(ext))
    os.chmod(key, 0o600)
    (tls_dir / "ca.pem").write_bytes(ca_pem.read_bytes())
    return tls_dir
