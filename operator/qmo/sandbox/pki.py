"""Certificates and keys for a sandbox control plane, generated locally with the ``openssl`` command.

One throw-away CA per sandbox signs the apiserver's serving certificate and one client certificate per
identity; RBAC then sees real users (``system:kube-scheduler``, a ``system:masters`` admin, ...) exactly as
in a kubeadm cluster. ECDSA P-256 keeps generation in milliseconds, so a fresh test session pays nothing.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The first address of --service-cluster-ip-range: the in-cluster `kubernetes` Service.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
VALIDITY_DAYS = 365
SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Identity:
    """A client certificate's subject: CN is the user name, O the groups."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


ADMIN = Identity("admin", "qmo-sandbox-admin", ("system:masters",))
CONTROLLER_MANAGER = Identity("kube-controller-manager", "system:kube-controller-manager")
SCHEDULER = Identity("kube-scheduler", "system:kube-scheduler")
# kwok writes node and pod status for nodes that have no kubelet; the node authorizer would not let it.
KWOK = Identity("kwok", "qmo-sandbox-kwok", ("system:masters",))
CLIENT_IDENTITIES = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK)
# The aggregation layer: kube-apiserver proxies an APIService's requests (custom.metrics.k8s.io for the HPA
# controller) with this client certificate, from a CA of its own so that no other certificate of the
# cluster can claim a front proxy's X-Remote-User headers.
FRONT_PROXY_CLIENT = "front-proxy-client"


@dataclass(frozen=True)
class Pki:
    """Paths of the generated files under one directory."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.directory / "sa.pub"

    @property
    def front_proxy_ca_cert(self) -> Path:
        return self.directory / "front-proxy-ca.crt"

    @property
    def front_proxy_client_cert(self) -> Path:
        return self.directory / "front-proxy-client.crt"

    @property
    def front_proxy_client_key(self) -> Path:
        return self.directory / "front-proxy-client.key"

    def client_cert(self, identity: Identity) -> Path:
        return self.directory / f"{identity.file_stem}.crt"

    def client_key(self, identity: Identity) -> Path:
        return self.directory / f"{identity.file_stem}.key"

    def complete(self) -> bool:
        files = [self.ca_cert, self.serving_cert, self.serving_key, self.service_account_key]
        files += [self.client_cert(identity) for identity in CLIENT_IDENTITIES]
        files += [self.front_proxy_ca_cert, self.front_proxy_client_cert, self.front_proxy_client_key]
        return all(path.exists() for path in files)


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _subject(identity_user: str, groups: tuple[str, ...] = ()) -> str:
    return "".join(f"/O={group}" for group in groups) + f"/CN={identity_user}"


def make_ca(cert: Path, key: Path, common_name: str) -> None:
    """A self-signed ECDSA P-256 certificate authority."""
    _openssl(
        "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(key), "-out", str(cert), "-days", str(VALIDITY_DAYS), "-subj", f"/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign",
    )  # fmt: skip
    key.chmod(0o600)


def issue(ca: tuple[Path, Path], cert: Path, key: Path, subject: str, extensions: list[str]) -> None:
    """A certificate for ``subject`` signed by ``ca`` (its certificate and key), with the extensions."""
    ca_cert, ca_key = ca
    with tempfile.TemporaryDirectory() as scratch:
        csr, extfile = Path(scratch) / "req.csr", Path(scratch) / "ext.cnf"
        extfile.write_text("\n".join(["basicConstraints=critical,CA:FALSE", *extensions]) + "\n")
        _openssl(
            "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(csr), "-subj", subject,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-set_serial", str(secrets.randbits(63)), "-days", str(VALIDITY_DAYS), "-out", str(cert),
            "-extfile", str(extfile),
        )  # fmt: skip
    key.chmod(0o600)


def generate_front_proxy(pki: Pki) -> None:
    """The aggregation layer's CA and the client pair kube-apiserver proxies APIService requests with.
    Separate from ``generate`` so a sandbox made before the aggregation layer gains it in place."""
    front_proxy_ca_key = pki.directory / "front-proxy-ca.key"
    make_ca(pki.front_proxy_ca_cert, front_proxy_ca_key, "qmo-sandbox-front-proxy-ca")
    issue(
        (pki.front_proxy_ca_cert, front_proxy_ca_key),
        pki.front_proxy_client_cert,
        pki.front_proxy_client_key,
        f"/CN={FRONT_PROXY_CLIENT}",
        ["keyUsage=critical,digitalSignature", "extendedKeyUsage=clientAuth"],
    )


def generate(directory: Path) -> Pki:
    """Write a CA, the apiserver serving pair, client pairs and the service-account signing key."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    if pki.ca_cert.exists() and pki.serving_cert.exists() and not pki.front_proxy_ca_cert.exists():
        generate_front_proxy(pki)  # an older sandbox: keep its CA (and every credential made from it)
        if pki.complete():
            return pki
    make_ca(pki.ca_cert, pki.ca_key, "qmo-sandbox-ca")
    ca = (pki.ca_cert, pki.ca_key)

    sans = [f"DNS:{name}" for name in SERVING_DNS_NAMES] + [
        f"IP:{ip}" for ip in ("127.0.0.1", KUBERNETES_SERVICE_IP)
    ]
    issue(
        ca,
        pki.serving_cert,
        pki.serving_key,
        "/CN=kube-apiserver",
        [
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=serverAuth",
            "subjectAltName=" + ",".join(sans),
        ],
    )
    for identity in CLIENT_IDENTITIES:
        issue(
            ca,
            pki.client_cert(identity),
            pki.client_key(identity),
            _subject(identity.user, identity.groups),
            ["keyUsage=critical,digitalSignature", "extendedKeyUsage=clientAuth"],
        )
    # Service-account tokens are signed with RS256, the algorithm every client library verifies.
    _openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        str(pki.service_account_key),
    )
    pki.service_account_key.chmod(0o600)
    _openssl("pkey", "-in", str(pki.service_account_key), "-pubout", "-out", str(pki.service_account_pub))
    generate_front_proxy(pki)
    return pki
