"""Public-key fingerprints, as the TLS library computes them.

The patched TLS library digests a server certificate's SubjectPublicKeyInfo
as the certificate holds it (tls_cert_pkey_fprint()), instead of having
OpenSSL 3 encode the key again (i2d_PUBKEY()).  The result must be the same
bytes: the SHA-256 of the DER SubjectPublicKeyInfo that the openssl command
prints (harness Cert.spki_sha256()).  At level "fingerprint", a match on
that digest must deliver, in-process (reuse off) and through tlsproxy
(reuse on), for ECDSA and RSA keys; a wrong one must defer.  The receiver
counts messages and plaintext.

The same function computes smtpd's fingerprint of a client certificate
(tls_server_post_accept()), which check_ccert_access and
permit_tls_clientcerts look up: a stock and a patched receiver must log
and match the same value for RSA, ECDSA and Ed25519 client certificates.
"""

import re

import pytest

from harness.world import wait_for


def colons(hexdigest):
    return ":".join(hexdigest[i:i + 2] for i in range(0, len(hexdigest), 2)).upper()


@pytest.mark.parametrize("rsa", [False, True], ids=["ecdsa", "rsa"])
@pytest.mark.parametrize("reuse", [False, True], ids=["reuse-off", "reuse-on"])
def test_pkey_fingerprint_match(world, reuse, rsa):
    cert = world.ca.issue("mx-fp-%s" % ("rsa" if rsa else "ec"), ["mx-fp.test"], rsa=rsa)
    r = world.postfix_receiver("r1", ["127.0.0.10", "127.0.0.11"], cert=cert)
    good = colons(cert.spki_sha256())
    wrong = colons("%064x" % (int(cert.spki_sha256(), 16) ^ 1))
    s = world.sender({"good.test": "[127.0.0.10]:25", "wrong.test": "[127.0.0.11]:25"},
                     reuse=reuse, smtp_tls_loglevel="2")
    s.main["smtp_tls_policy_maps"] = s.write_table("tls_policy", {
        "[127.0.0.10]:25": "fingerprint match=%s" % good,
        "[127.0.0.11]:25": "fingerprint match=%s" % wrong})
    world.start()
    world.send(s, "user@good.test", n=1)
    world.send(s, "user@wrong.test", n=1)
    wait_for(lambda: s.grep(r"to=<user@good\.test>.*status=sent"), 60, "good delivered")
    wait_for(lambda: s.grep(r"to=<user@wrong\.test>.*status=deferred"), 60, "wrong deferred")

    # The fingerprint that the library computed, from the verbose log of
    # whoever did the handshake (tlsproxy with reuse, else smtp).
    logged = set()
    for line in s.grep(r"pkey fingerprint=", ident="tlsproxy" if reuse else "smtp"):
        logged.add(re.search(r"pkey fingerprint=([0-9A-F:]+)", line).group(1))
    assert logged == {good}
    c = r.counts()
    assert (c.messages, c.plaintext_messages) == (1, 0), c
    assert s.grep(r"to=<user@wrong\.test>.*Server certificate not verified")


# -- client certificates: smtpd's fingerprints --------------------------
#
# The patch also changes tls_server_post_accept(): smtpd's public-key
# fingerprint of a client certificate, which check_ccert_access and
# permit_tls_clientcerts (relay_clientcerts) look up.  Stock and patched
# receivers must compute, log and match the same value, for every key type
# a client certificate can have.

CLIENT_KEYS = {
    "rsa": ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"),
    "ecdsa": ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"),
    "ed25519": ("-algorithm", "ED25519"),
}


def client_cert(world, kind):
    """A client certificate (extendedKeyUsage clientAuth) from the test CA
    with a key of the given kind."""
    from harness.pki import Cert, _openssl
    d, name = world.ca.dir, "client-" + kind
    key, csr, crt, ext = ("%s/%s.%s" % (d, name, x) for x in ("key", "csr", "pem", "ext"))
    _openssl("genpkey", *CLIENT_KEYS[kind], "-out", key)
    _openssl("req", "-new", "-key", key, "-subj", "/CN=%s.test" % name, "-out", csr)
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", csr, "-CA", world.ca.cert, "-CAkey", world.ca.key,
             "-set_serial", "%d" % (1000 + len(kind)), "-days", "30", "-sha256",
             "-extfile", ext, "-out", crt)
    chain = "%s/%s.chain.pem" % (d, name)
    with open(chain, "w") as out:
        for part in (key, crt, world.ca.cert):
            with open(part) as f:
                out.write(f.read())
    return Cert(name, key, crt, chain)


# listener -> the relay restrictions it applies, and which table key: the
# client certificate's public-key fingerprint, or (the control) its
# certificate fingerprint looked up as a public-key fingerprint.
LISTENERS = {
    "ccert": ("check_ccert_access {texthash:%(table)s, {search_order = "
              "pubkey_fingerprint}}, reject", "pkey"),
    "clientcerts": ("permit_tls_clientcerts, reject", "pkey"),
    "control": ("check_ccert_access {texthash:%(control)s, {search_order = "
                "pubkey_fingerprint}}, reject", "cert"),
}
ADDRS = {("stock", "ccert"): "127.0.0.41", ("stock", "clientcerts"): "127.0.0.42",
         ("patched", "ccert"): "127.0.0.43", ("patched", "clientcerts"): "127.0.0.44",
         ("patched", "control"): "127.0.0.45"}


@pytest.mark.parametrize("kind", list(CLIENT_KEYS))
def test_client_certificate_pkey_fingerprint(world, kind):
    """An RSA, ECDSA or Ed25519 client certificate: a stock and a patched
    receiver (smtpd_tls_ask_ccert = yes, sha256) each log the same "pkey
    fingerprint", the one that openssl computes (SHA-256 of the DER
    SubjectPublicKeyInfo), and relay the client's mail only through a
    table keyed by it: check_ccert_access with search_order =
    pubkey_fingerprint, and permit_tls_clientcerts with relay_clientcerts.
    The control, a table holding the certificate fingerprint searched as
    a public-key fingerprint, rejects the mail."""
    cert = client_cert(world, kind)
    pkey = colons(cert.spki_sha256())
    cert_fp = cert.fingerprint("sha256")
    assert pkey != cert_fp
    receivers = {}
    for flavour in ("stock", "patched"):
        names = [n for (f, n) in ADDRS if f == flavour]
        r = world.postfix_receiver(
            flavour, [ADDRS[flavour, n] for n in names], flavour=flavour,
            smtpd_tls_ask_ccert="yes", smtpd_tls_fingerprint_digest="sha256",
            smtpd_tls_loglevel="summary, cache, peercert", mynetworks="")
        table = r.write_table("ccert", {pkey: "OK"})
        control = r.write_table("ccert_control", {cert_fp: "OK"})
        r.main["relay_clientcerts"] = r.write_table("relay_clientcerts", {pkey: kind})
        for n in names:
            r.main["%s_restrictions" % n] = LISTENERS[n][0] % {
                "table": table.split(":", 1)[1], "control": control.split(":", 1)[1]}
        r.services = ["%s -o smtpd_relay_restrictions=$%s_restrictions"
                      % (line, next(n for n in names if ADDRS[flavour, n] in line))
                      for line in r.services]
        receivers[flavour] = r
    routes = {"%s-%s.test" % k: "[%s]:25" % a for k, a in ADDRS.items()}
    s = world.sender(routes, reuse=False, smtp_tls_chain_files=cert.chain)
    world.start()
    for domain in routes:
        world.send(s, "user@" + domain)
    wait_for(lambda: len(s.grep(r"status=(sent|bounced|deferred)", ident="smtp"))
             >= len(routes), 60, "every delivery's outcome\n" + s.log_tail())

    for (flavour, n), addr in ADDRS.items():
        r = receivers[flavour]
        line = s.grep(r"to=<user@%s-%s\.test>.*status=" % (flavour, n), ident="smtp")
        if LISTENERS[n][1] == "pkey":
            assert "status=sent" in line[0], line
            wait_for(lambda: r.counts(addr).messages == 1, 30, "the message at " + addr)
        else:
            # The final "reject" of smtpd_relay_restrictions.
            assert "status=bounced" in line[0] and "554 5.7.1" in line[0] \
                and "Recipient address rejected: Access denied" in line[0], line
            assert r.counts(addr).messages == 0
        logged = {m.group(1) for t in r.grep(r"pkey fingerprint=", ident="smtpd")
                  for m in [re.search(r"pkey fingerprint=([0-9A-F:]+)", t)]}
        assert logged == {pkey}, (flavour, logged)
