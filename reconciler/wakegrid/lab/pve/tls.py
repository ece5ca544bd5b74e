"""TLS: the node's self-signed certificate (``pve-ssl.pem``) and the client context for cluster-internal HTTPS."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path


def _client_ssl_context() -> ssl.SSLContext:
    """Cluster-internal HTTPS: nodes have self-signed certificates (real PVE pins them through pmxcfs)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ensure_certificate(cert_dir: Path, node: str) -> tuple[Path, Path]:
    """``pve-ssl.pem``/``pve-ssl.key`` in ``cert_dir``, self-signed with the openssl CLI when missing."""
    cert, key = cert_dir / "pve-ssl.pem", cert_dir / "pve-ssl.key"
    if cert.exists() and key.exists():
        return cert, key
    cert_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            f"/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN={node}",
            "-addext",
            f"subjectAltName=DNS:{node},DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return cert, key
