"""Public-key fingerprints, as the TLS library computes them.

The patched TLS library digests a server certificate's SubjectPublicKeyInfo
as the certificate holds it (tls_cert_pkey_fprint()), instead of having
OpenSSL 3 encode the key again (i2d_PUBKEY()).  The result must be the same
bytes: the SHA-256 of the DER SubjectPublicKeyInfo that the openssl command
prints (harness Cert.spki_sha256()).  At level "fingerprint", a match on
that digest must deliver, in-process (reuse off) and through tlsproxy
(reuse on), for ECDSA and RSA keys; a wrong one must defer.  The receiver
counts messages and plaintext.
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
