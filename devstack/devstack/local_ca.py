"""A local certificate authority for the paths check's TLS: a CA made on this machine (openssl, nothing
downloaded) signs one server certificate for the test names. Clients trust the CA per process only (an
environment variable, a browser profile's own certificate store), never through the system trust store.

The names are under `.test`, a top-level domain reserved for testing that no resolver answers: they resolve
inside the client host only (its /etc/netns/<name>/hosts).
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from devstack.safe_files import ensure_dir, write_private

DAYS = 2  # a lab lives hours (paths-up makes it afresh within 12 h of expiry); a stolen key is soon worthless


class LocalCaError(RuntimeError):
    """openssl failed; the message carries its error."""


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # what a client trusts
    cert: Path  # the server's chain (its certificate, then the CA's)
    key: Path  # the server's private key (0600)


def _openssl(*args: str, stdin: str | None = None, clock: str = "") -> str:
    """openssl; with `clock` (a libfaketime offset, e.g. "-2h") it signs as if it were then (a backdated or
    expired certificate: the remote lab's)."""
    shift = ["faketime", "-f", clock] if clock else []
    done = subprocess.run([*shift, "openssl", *args], input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise LocalCaError(f"openssl {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def files(directory: Path) -> TlsFiles:
    """Where `issue` puts its files in `directory`."""
    return TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")


def valid_for(tls: TlsFiles, *, hours: int) -> bool:
    """Whether the server certificate exists and is still valid `hours` from now."""
    if not tls.cert.exists():
        return False
    done = subprocess.run(["openssl", "x509", "-checkend", str(hours * 3600), "-noout", "-in", str(tls.cert)],
                          capture_output=True, timeout=30, check=False)  # fmt: skip
    return done.returncode == 0


def issue(directory: Path, names: list[str], *, days: int = DAYS, clock: str = "") -> TlsFiles:
    """A fresh CA and a server certificate for `names` (DNS names), in `directory` (root only, 0700), valid for
    `days` from now, or from `clock` (a libfaketime offset: "-2h" backdates both, "-40d" with 30 days expired)."""
    ensure_dir(directory, mode=0o700)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        work = Path(scratch)
        ca_key, server_key, request = work / "ca.key", work / "server.key", work / "server.csr"
        for key in (ca_key, server_key):
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
        ca_cert = _openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=livekit-harness local CA",
                           "-days", str(days), "-addext", "basicConstraints=critical,CA:TRUE",
                           "-addext", "keyUsage=critical,keyCertSign,cRLSign", clock=clock)  # fmt: skip
        (work / "ca.pem").write_text(ca_cert)
        _openssl("req", "-new", "-key", str(server_key), "-subj", f"/CN={names[0]}", "-out", str(request))
        extensions = work / "server.ext"
        extensions.write_text(f"subjectAltName={','.join(f'DNS:{n}' for n in names)}\n"
                              "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")  # fmt: skip
        server_cert = _openssl("x509", "-req", "-in", str(request), "-CA", str(work / "ca.pem"), "-CAkey", str(ca_key),
                               "-CAcreateserial", "-days", str(days), "-extfile", str(extensions),
                               clock=clock)  # fmt: skip
        issued = files(directory)
        write_private(issued.ca_cert, ca_cert, mode=0o644)
        write_private(issued.cert, server_cert + ca_cert, mode=0o600)
        write_private(issued.key, server_key.read_text(), mode=0o600)
    return issued  # the CA's key is gone with the scratch directory: nothing more can be signed
