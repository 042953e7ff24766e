"""A test certificate authority made with the openssl command.

    ca = TestCA(directory)                  # CA key and self-signed certificate
    cert = ca.issue("mx1", ["mx1.example.test"])
    cert.key, cert.cert, cert.chain         # file names (chain = key + cert + CA)

Keys are ECDSA P-256 (fast to make); issue(..., rsa=True) makes RSA-2048.
"""

import os
import subprocess
from dataclasses import dataclass


def _openssl(*args, cwd=None):
    subprocess.run(("openssl",) + args, cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass
class Cert:
    name: str
    key: str
    cert: str
    chain: str          # key, leaf certificate, CA certificate in one file

    def spki_sha256(self):
        """SHA-256 of the DER SubjectPublicKeyInfo (TLSA selector 1, type 1)."""
        pub = subprocess.run(["openssl", "x509", "-in", self.cert, "-noout",
                              "-pubkey"], check=True, capture_output=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"],
                             input=pub, check=True, capture_output=True).stdout
        import hashlib
        return hashlib.sha256(der).hexdigest()

    def fingerprint(self, digest="sha256"):
        out = subprocess.run(["openssl", "x509", "-in", self.cert, "-noout",
                              "-fingerprint", "-" + digest], check=True,
                             capture_output=True, text=True).stdout
        return out.strip().split("=", 1)[1]


class TestCA:
    __test__ = False                # not a pytest test class

    def __init__(self, directory, name="Test CA"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.key = os.path.join(directory, "ca.key")
        self.cert = os.path.join(directory, "ca.pem")
        self._serial = 1
        if not os.path.exists(self.cert):
            _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout",
                     "-out", self.key)
            _openssl("req", "-x509", "-new", "-key", self.key, "-sha256",
                     "-days", "30", "-subj", "/O=Postfix TLS reuse tests/CN=" + name,
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     "-out", self.cert)

    def spki_sha256(self):
        """SHA-256 of the CA's DER SubjectPublicKeyInfo (TLSA 2 1 1 data)."""
        return Cert("ca", self.key, self.cert, self.cert).spki_sha256()

    def issue(self, name, dns_names, rsa=False, days=30, expired=False):
        """Issue a server certificate for dns_names (the first is the CN);
        expired: valid for one day a year ago (openssl ca, which can set
        the dates)."""
        key = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        crt = os.path.join(self.dir, name + ".pem")
        ext = os.path.join(self.dir, name + ".ext")
        if rsa:
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt",
                     "rsa_keygen_bits:2048", "-out", key)
        else:
            _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout",
                     "-out", key)
        _openssl("req", "-new", "-key", key, "-subj", "/CN=" + dns_names[0],
                 "-out", csr)
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n"
                    "subjectAltName=" + ",".join("DNS:" + n for n in dns_names) + "\n")
        self._serial += 1
        if expired:
            self._issue_expired(name, csr, ext, crt)
        else:
            _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                     "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                     "-days", str(days), "-sha256", "-extfile", ext, "-out", crt)
        chain = os.path.join(self.dir, name + ".chain.pem")
        with open(chain, "w") as out:
            for part in (key, crt, self.cert):
                with open(part) as f:
                    out.write(f.read())
        os.chmod(key, 0o600)
        os.chmod(chain, 0o600)
        return Cert(name, key, crt, chain)

    def _issue_expired(self, name, csr, ext, crt):
        import time
        db = os.path.join(self.dir, name + ".ca-db")
        os.makedirs(db, exist_ok=True)
        open(os.path.join(db, "index.txt"), "w").close()
        conf = os.path.join(db, "ca.cnf")
        with open(conf, "w") as f:
            f.write("[ca]\ndefault_ca = test\n[test]\n"
                    "database = %s/index.txt\nnew_certs_dir = %s\nserial = %s/serial\n"
                    "default_md = sha256\npolicy = any\nunique_subject = no\n"
                    "[any]\ncommonName = supplied\n" % (db, db, db))
        year_ago = time.gmtime(time.time() - 365 * 86400)
        day_after = time.gmtime(time.time() - 364 * 86400)
        _openssl("ca", "-batch", "-config", conf, "-in", csr, "-cert", self.cert,
                 "-keyfile", self.key, "-extfile", ext, "-notext",
                 "-rand_serial", "-out", crt,
                 "-startdate", time.strftime("%Y%m%d%H%M%SZ", year_ago),
                 "-enddate", time.strftime("%Y%m%d%H%M%SZ", day_after))
