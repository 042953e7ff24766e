"""Never worse than reuse off when tlsproxy(8) cannot do the work.

A transport names a client certificate and key that only root can read
(mode 0600, as key files often are).  smtp(8) reads them before it drops
its privileges; tlsproxy(8) runs as the mail owner and cannot, so it
refuses the client role for that transport.  With reuse off the mail
goes out over TLS with that certificate; with reuse on, the patched
client must do the same: TLS in the smtp(8) process, over the same
connection, no deferral, no plaintext, one warning per process.  (Stock
3.12 defers it as a "handshake failure", and at level may falls back to
plaintext.)  The other causes, a master.cf without tlsproxy and a
throttled tlsproxy, are in test_admin_defaults.py, test_fail_closed.py
and test_faults.py."""

import os
import shutil

import pytest

from harness.world import wait_for

ADDR = "127.0.0.10"
SPACING = 3


def root_only_client_cert(world):
    cert = world.cert("client", ["client.test"])
    d = os.path.join(world.dir, "root-only")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    paths = []
    for src in (cert.cert, cert.key):
        dst = os.path.join(d, os.path.basename(src))
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o600)
        paths.append(dst)
    return paths


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse-on", "reuse-off"])
@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_transport_client_cert_unreadable_by_tlsproxy(world, level, reuse):
    n = 3
    cert, key = root_only_client_cert(world)
    r = world.postfix_receiver("r1", [ADDR])
    s = world.sender({"d1.test": "[%s]:25" % ADDR}, reuse=reuse, level=level)
    s.add_service("certsmtp unix - - n - - smtp -o smtp_tls_cert_file=%s "
                  "-o smtp_tls_key_file=%s" % (cert, key))
    s.main["transport_maps"] = s.write_table("transport", {
        "d1.test": "certsmtp:[%s]:25" % ADDR})
    world.start()
    ids = world.send(s, "user@d1.test", n=n, spacing=SPACING)
    c = r.wait_messages(n, timeout=60)
    # The outcome that reuse off has: every message over TLS, none
    # deferred, none in plaintext.
    assert (c.messages, c.plaintext_messages, c.handshakes) == (n, 0, n), c
    wait_for(lambda: len(s.grep(r"status=sent")) >= n, 30, "%d deliveries" % n)
    assert sorted(r.message_ids()) == sorted(ids)
    assert not s.grep(r"status=deferred")
    warned = s.grep(r"^warning: \S+: TLS connection reuse is unavailable: the "
                    r"tlsproxy service could not take the connection")
    if not reuse:
        assert not warned and not s.grep(r"warning:", ident="tlsproxy")
        return
    # Why: tlsproxy could not load the files, and refused the client role.
    assert s.grep(r"warning: private/tlsproxy service role \"client\" is not "
                  r"available", ident="smtp")
    assert s.grep(r"Permission denied", ident="tlsproxy"), s.log_tail(40)
    smtps = {pid for ident, pid, _ in s.log_records() if ident.endswith("/smtp")}
    assert 1 <= len(warned) <= len(smtps), (warned, smtps)
    assert s.conn_uses() == []
