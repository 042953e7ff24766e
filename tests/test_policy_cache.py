"""Connection cache destinations and cache keys (issue 13, items 6, 8, 16).

- IPv6 nexthops in smtp_connection_cache_destinations: [ipv6:::1] (and
  its :port and [::1] forms, a non-canonical spelling, a table entry) match
  a nexthop [ipv6:::1]:25, spaced mail is reused, counted at a receiver on
  ::1, and nothing is logged as a "type:table" problem.
- CA file content: after the CAfile content changes so that the receiver is
  no longer trusted, "postfix reload" (the documented step) makes the next
  delivery verify anew; without it, the cached connection verified under the
  old CAs is reused (the reason for the documentation).
- The TLS client policy serializer notices new fields in the property
  structures (a unit test in src/tls; see test_upstream_units.py for the
  golden test itself).
"""

import os
import re
import shutil
import subprocess
import time

import pytest

from harness.base import OBJ as _OBJ, WORKTREE, make_hint
from harness.receivers import PostfixReceiver
from harness.world import wait_for

SPACING = 3
WORK = WORKTREE


# -- item 6: IPv6 cache destinations -------------------------------------

def ipv6_receiver(world, name="r6"):
    """A Postfix receiver on [::1]:25 only, logging as <name>/v6/smtpd.
    Its sender needs inet_protocols = all and an inet_interfaces without
    ::1 (else "mail for ::1 loops back to myself")."""
    r = PostfixReceiver(name, os.path.join(world.dir, name), [],
                        world.cert("mx-" + name))
    r.main["inet_protocols"] = "all"
    r.main["mynetworks"] = "127.0.0.0/8, [::1]/128"
    r.addresses = ["v6"]                # counts() reads <name>/v6/smtpd
    r.add_service("[::1]:25 inet n - n - - smtpd -o syslog_name=%s/v6" % name)
    world.things.append(r)
    return r


@pytest.mark.parametrize("cache_dest, flavour", [
    ("[ipv6:::1]", "patched"),
    ("[ipv6:::1]:25", "patched"),
    ("[::1]", "patched"),
    ("[IPv6:0:0:0:0:0:0:0:1]", "patched"),
    ("table", "patched"),
    ("[ipv6:::1]", "stock"),
], ids=["bracket", "bracket-port", "no-prefix", "long-form", "table",
        "stock-bracket"])
def test_ipv6_cache_destination(world, cache_dest, flavour):
    """Plaintext connection caching for the nexthop [ipv6:::1]:25, spaced
    messages: the patched client matches every IPv6 form (one connection
    at the receiver, no warning); stock never matches (one connection per
    message)."""
    n = 5
    r = ipv6_receiver(world)
    s = world.sender({"d6.test": "[ipv6:::1]:25"}, level="none", tuned=False,
                     flavour=flavour, inet_protocols="all",
                     inet_interfaces="127.0.0.1",
                     smtp_connection_cache_time_limit="10s",
                     connection_cache_ttl_limit="30s")
    if cache_dest == "table":
        cache_dest = s.write_table("cache_dest", {"[ipv6:::1]": "yes"})
    s.main["smtp_connection_cache_destinations"] = cache_dest
    world.start()
    world.send(s, "user@d6.test", n=n, spacing=SPACING)
    wait_for(lambda: len(r.accepted_ids()) >= n, 60, "%d messages" % n)
    wait_for(lambda: len(s.grep(r"status=sent")) >= n, 30,
             "%d deliveries logged" % n)
    c = r.counts()
    assert c.messages == n, c
    assert all("relay=::1[::1]:25" in t for t in s.grep(r"status=sent"))
    warnings = s.grep(r"warning:")
    if flavour == "patched":
        assert c.connections == 1, c
        assert s.conn_uses() == list(range(2, n + 1))
        assert warnings == []
    else:
        assert c.connections == n, c


def test_malformed_ipv6_cache_destination_warns_once(world):
    """A [] element with ':' that is no IPv6 address is reported once at
    start-up and never taken for a "type:table"."""
    r = ipv6_receiver(world)
    s = world.sender({"d6.test": "[ipv6:::1]:25"}, level="none", tuned=False,
                     inet_protocols="all", inet_interfaces="127.0.0.1",
                     smtp_connection_cache_destinations="[ipv6:x::y], [ipv6:::1]")
    world.start()
    world.send(s, "user@d6.test", n=2, spacing=1)
    wait_for(lambda: len(r.accepted_ids()) >= 2, 60, "2 messages")
    s.wait_log(r"status=sent", count=2)
    warnings = s.grep(r"warning:")
    assert warnings and all(
        re.search(r"smtp_connection_cache_destinations: malformed address in "
                  r"\"\[ipv6:x::y\]\"; this element will never match", w)
        for w in warnings), warnings
    assert not s.grep(r"table|dictionary")


# -- item 8: CA file content and "postfix reload" ------------------------

@pytest.mark.parametrize("reload", [True, False], ids=["reload", "no-reload"])
def test_cafile_content_change(world, reload):
    """Level secure, reuse on, a connection verified under the CAs in
    smtp_tls_CAfile is cached.  The CAfile content is replaced by another
    CA, which does not trust the receiver.  With "postfix reload" (the step
    that TLS_README documents), the cached connection is closed and the next
    delivery verifies anew: it is deferred as not verified, and the receiver
    sees no further message.  Without the reload, the connection verified
    under the old CAs is reused: cache keys name the CAfile, not its content,
    which is why the documentation asks for the reload."""
    from harness.pki import TestCA
    other = TestCA(os.path.join(world.dir, "pki-other"), name="Other CA")
    r = world.postfix_receiver("r1", ["127.0.0.10"])
    s = world.sender({"d1.test": "[127.0.0.10]:25"}, reuse=True, level="secure",
                     smtp_tls_secure_cert_match="mx-r1.test")
    cafile = os.path.join(s.conf, "cafile.pem")
    shutil.copyfile(world.ca.cert, cafile)
    s.main["smtp_tls_CAfile"] = cafile
    world.start()

    world.send(s, "user@d1.test", tag="first")
    s.wait_log(r"status=sent")
    wait_for(lambda: len(r.accepted_ids()) >= 1, 30, "the first message")
    assert (r.counts().connections, r.counts().handshakes) == (1, 1)
    scache = s.children("scache")
    assert scache, "no scache process holds the connection"

    tmp = cafile + ".new"
    shutil.copyfile(other.cert, tmp)
    os.replace(tmp, cafile)
    if reload:
        s.reload()
        # scache(8) exits when the master closes its status pipe, and the
        # connection that it held is closed at the receiver.
        wait_for(lambda: not any(p in s.children("scache") for p in scache),
                 30, "the old scache process to exit")
        r.wait_log(r"^disconnect from ", ident="r1/127.0.0.10/smtpd")
    else:
        time.sleep(SPACING)
    world.send(s, "user@d1.test", tag="second")

    if reload:
        s.wait_log(r"status=deferred \(Server certificate not verified\)")
        assert s.grep(r"certificate verification failed for 127\.0\.0\.10"
                      r".*untrusted issuer", ident="tlsproxy")
        assert len(s.grep(r"status=sent")) == 1
        c = r.counts()
        assert c.messages == 1 and len(r.accepted_ids()) == 1, c
        assert not s.grep(r"conn_use=")
        assert not r.grep(r"client=", ident="r1/127.0.0.10/smtpd")[1:]
    else:
        s.wait_log(r"status=sent", count=2)
        wait_for(lambda: len(r.accepted_ids()) >= 2, 30, "the second message")
        c = r.counts()
        assert (c.connections, c.handshakes, c.messages) == (1, 1, 2), c
        assert s.conn_uses() == [2]


# -- item 16: the policy serializer notices new property members ---------

OBJ = os.path.join(_OBJ, os.environ.get("UNIT_FLAVOUR", "patched"))


def _tls_copy(tmp_path):
    """src/tls of the built tree in a scratch tree whose include and lib
    are links to the built ones (the Makefile uses ../../include, lib, conf)."""
    if not os.path.exists(os.path.join(OBJ, "src", "tls", "tls_client_policy.o")):
        pytest.fail("no built tree at %s: run '%s'" % (OBJ, make_hint("build")))
    root = tmp_path / "tree"
    (root / "src").mkdir(parents=True)
    subprocess.run(["cp", "-a", os.path.join(OBJ, "src", "tls"), str(root / "src")],
                   check=True)
    for d in ("include", "lib", "conf"):
        os.symlink(os.path.join(OBJ, d), str(root / d))
    return root / "src" / "tls"


def _make(tls, *targets):
    return subprocess.run(["make", "-C", str(tls)] + list(targets),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", timeout=300)


def _add_member(tls, struct, after, member):
    """Insert a member line into struct after the line matching 'after'
    (None: before the closing line)."""
    path = tls / "tls.h"
    lines = path.read_text().splitlines(keepends=True)
    end = next(i for i, l in enumerate(lines) if l.startswith("} %s;" % struct))
    start = max(i for i in range(end) if lines[i].startswith("typedef struct {"))
    if after is None:
        at = end
    else:
        at = next(i for i in range(start, end) if re.search(after, lines[i])) + 1
    lines.insert(at, "    %s\n" % member)
    path.write_text("".join(lines))


def test_policy_fields_unchanged_pass(tmp_path):
    """The unmodified tree compiles, and both policy unit tests pass."""
    tls = _tls_copy(tmp_path)
    os.utime(tls / "tls_client_policy.c")
    r = _make(tls, "tls_client_policy.o", "tls_client_policy_test",
              "tls_client_policy_fields_test")
    assert r.returncode == 0, r.stdout[-3000:]


@pytest.mark.parametrize("struct, after, member, expect", [
    ("TLS_CLIENT_START_PROPS", r"\*sni;", "const char *dummy_new_field;",
     r"error: size of array .policy_start_props_changed_serverid. is negative"),
    ("TLS_CLIENT_START_PROPS", None, "char    dummy_new_field;",
     r"error: size of array .policy_start_props_changed. is negative"),
    ("TLS_CLIENT_INIT_PROPS", None, "int     dummy_new_field;",
     r"error: size of array .policy_init_props_changed. is negative"),
    ("TLS_CLIENT_INIT_PROPS", r"\bverifydepth;", "int     dummy_new_field;",
     "fields_test"),
], ids=["start-pointer-middle", "start-char-end", "init-int-end",
        "init-int-in-padding"])
def test_policy_fields_new_member_fails(tmp_path, struct, after, member, expect):
    """A member added to a property structure without the serializer's list
    breaks the build (layout checks) or, when it hides in alignment padding
    and changes no size or offset, "make tests" (name comparison)."""
    tls = _tls_copy(tmp_path)
    _add_member(tls, struct, after, member)
    r = _make(tls, "tls_client_policy.o")
    if expect != "fields_test":
        assert r.returncode != 0, "compiled with a new member:\n" + r.stdout[-2000:]
        assert re.search(expect, r.stdout), r.stdout[-3000:]
        return
    # Layout unchanged on this platform (LP64): the compile-time checks pass,
    # the name comparison must not.
    import struct as _struct
    if _struct.calcsize("P") != 8:
        pytest.skip("the padding after verifydepth exists on LP64 only")
    assert r.returncode == 0, r.stdout[-3000:]
    r = _make(tls, "tls_client_policy_fields_test")
    assert r.returncode != 0, r.stdout[-2000:]
    assert re.search(r"^< %s dummy_new_field$" % struct, r.stdout, re.M), r.stdout[-2000:]
