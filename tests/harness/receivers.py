"""Receiving SMTP servers with real TLS, and counts taken at their side.

PostfixReceiver: a Postfix smtpd instance on one or more 127.0.0.x:25
addresses.  Each listener logs under its own syslog_name (<name>/<address>),
so connections, TLS handshakes and messages are counted per address from the
receiver's own log.  Mail is discarded, or stored (virtual(8) Maildir) for
content checks.

AioReceiver: Debian's aiosmtpd (a different SMTP and TLS implementation:
Python's asyncio and ssl modules) on one address, see aioreceiver.py.

Both give counts() -> Counts and messages() -> [bytes].
"""

import glob
import json
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field

from .proc import stop_process
from .postfix import Postfix

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Counts:
    connections: int = 0        # TCP connections accepted
    handshakes: int = 0         # TLS handshakes completed (full + resumed)
    resumed: int = 0            # of which resumed sessions
    messages: int = 0           # messages accepted (end of DATA, queued)
    plaintext_messages: int = 0  # messages accepted without TLS
    tls: list = field(default_factory=list)   # (protocol, cipher) per handshake

    def __add__(self, o):
        return Counts(self.connections + o.connections, self.handshakes + o.handshakes,
                      self.resumed + o.resumed, self.messages + o.messages,
                      self.plaintext_messages + o.plaintext_messages, self.tls + o.tls)


TLS_RE = re.compile(r"TLS connection established from .*?: (\S+) with cipher (\S+)")
CLIENT_RE = re.compile(r"([0-9A-Za-z]+): client=")
QMGR_FROM_RE = re.compile(r"([0-9A-Za-z]+): from=<.*>, size=\d+")


class PostfixReceiver(Postfix):
    def __init__(self, name, base, addresses, cert, store=False, flavour="stock",
                 port=25, **tls):
        super().__init__(name, base, flavour=flavour, tlsproxy=False)
        self.addresses = list(addresses)
        self.port = port
        self.store = store
        self.mailbox = os.path.join(base, "mail")
        self.main.update({
            "smtpd_tls_security_level": "may",
            "smtpd_tls_chain_files": cert.chain,
            "smtpd_tls_loglevel": "summary, cache",
            "smtpd_tls_received_header": "yes",
            "relay_domains": "static:ALL",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_timeout": "300s",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
        })
        if store:
            self.main.update({
                "relay_transport": "virtual",
                "virtual_mailbox_base": self.mailbox,
                "virtual_mailbox_maps": "static:Maildir/",
                "virtual_mailbox_domains": "",
                "virtual_uid_maps": "static:65534",
                "virtual_gid_maps": "static:65534",
                "virtual_minimum_uid": "100",
                "virtual_mailbox_limit": "0",
            })
        else:
            self.main["relay_transport"] = "discard:"
        self.main.update({k: str(v) for k, v in tls.items()})
        for a in self.addresses:
            self.add_service("%s:%d inet n - n - - smtpd -o syslog_name=%s/%s"
                             % (a, port, name, a))

    def start(self):
        if self.store:
            os.makedirs(self.mailbox, exist_ok=True)
            os.chmod(self.mailbox, 0o1777)
        super().start()

    def counts(self, address=None):
        """Counts for one listener address, or for all of them.

        A message counts when it is accepted at the end of DATA: its queue
        id has a "client=" line from this listener's smtpd (which smtpd
        logs at the first accepted RCPT) and qmgr's "from=<...>, size="
        line, which qmgr logs only when it picks up a message that cleanup
        has committed to the queue, i.e. after the "." and before smtpd's
        "250 Ok: queued as".  A transfer that breaks off in DATA, or whose
        message cleanup rejects, never counts."""
        idents = {"%s/%s/smtpd" % (self.name, a): a for a in self.addresses}
        per = {a: Counts() for a in self.addresses}
        tls_pids = {}               # ident -> pids whose connection has TLS
        pending = {}                # queue id -> (address, plaintext?)
        qmgr = self.name + "/qmgr"
        for i, pid, text in self.log_records():
            if i == qmgr:
                m = QMGR_FROM_RE.match(text)
                if m and m.group(1) in pending:
                    a, plain = pending.pop(m.group(1))
                    per[a].messages += 1
                    per[a].plaintext_messages += plain
                continue
            a = idents.get(i)
            if a is None:
                continue
            c, tp = per[a], tls_pids.setdefault(i, set())
            if text.startswith("connect from "):
                c.connections += 1
                tp.discard(pid)
            elif "TLS connection established from" in text:
                c.handshakes += 1
                tp.add(pid)
                m = TLS_RE.search(text)
                if m:
                    c.tls.append((m.group(1), m.group(2)))
            elif text.endswith("Reusing old session") or "Reusing old session (" in text:
                c.resumed += 1
            else:
                m = CLIENT_RE.match(text)
                if m:
                    pending[m.group(1)] = (a, pid not in tp)
        if address is not None:
            return per[address]
        total = Counts()
        for a in self.addresses:
            total += per[a]
        return total

    def wait_messages(self, n, timeout=30):
        """Wait until n messages count as accepted (see counts()), and
        return the counts.  A sender logs "status=sent" as soon as it has
        the 250 reply; qmgr's line that counts the message here may come
        later, the more so on a loaded machine."""
        from .world import wait_for
        wait_for(lambda: self.counts().messages >= n, timeout,
                 "%d message(s) counted at %s" % (n, self.name))
        return self.counts()

    def connections(self):
        """The smtpd connections, in order: one dict per "connect from"
        with its smtpd pid, the index of that log record (a pid serves one
        connection after another, so the pair names a connection), whether
        it has been disconnected yet, and the Message-IDs of the messages
        accepted over it (end of DATA, as counts())."""
        idents = {"%s/%s/smtpd" % (self.name, a) for a in self.addresses}
        conns, current, byqid, msgid = [], {}, {}, {}
        for n, (i, pid, text) in enumerate(self.log_records()):
            if i in idents:
                if text.startswith("connect from "):
                    current[pid] = {"pid": pid, "connect": n, "address": i.split("/")[1],
                                    "disconnected": False, "messages": []}
                    conns.append(current[pid])
                elif text.startswith("disconnect from ") and pid in current:
                    current.pop(pid)["disconnected"] = True
                else:
                    m = CLIENT_RE.match(text)
                    if m and pid in current:
                        byqid[m.group(1)] = current[pid]
            elif i == self.name + "/cleanup":
                m = re.match(r"([0-9A-Za-z]+): message-id=(\S+)", text)
                if m:
                    msgid[m.group(1)] = m.group(2)
            elif i == self.name + "/qmgr":
                m = QMGR_FROM_RE.match(text)
                if m and m.group(1) in byqid and m.group(1) in msgid:
                    byqid.pop(m.group(1))["messages"].append(msgid.pop(m.group(1)))
        return conns

    def connection_of(self, message_id):
        """The connection (see connections()) that accepted a message, or
        None."""
        for c in self.connections():
            if message_id in c["messages"]:
                return c
        return None

    def message_ids(self):
        """Message-IDs of the messages this receiver accepted, in order."""
        return re.findall(r"message-id=(\S+)", "\n".join(
            self.grep(r"^[0-9A-Za-z]+: message-id=", ident=self.name + "/cleanup")))

    def accepted_ids(self):
        """Message-IDs of the messages this receiver queued (cleanup saw
        the whole message and handed it to qmgr), in order.  Unlike
        message_ids(), a transfer that broke off in DATA does not count."""
        msgid, out = {}, []
        for ident, pid, text in self.log_records():
            m = re.match(r"([0-9A-Za-z]+): message-id=(\S+)", text)
            if m and ident.endswith("/cleanup"):
                msgid[m.group(1)] = m.group(2)
                continue
            m = re.match(r"([0-9A-Za-z]+): from=<.*>, size=\d+", text)
            if m and ident.endswith("/qmgr") and m.group(1) in msgid:
                out.append(msgid.pop(m.group(1)))
        return out

    def messages(self):
        out = []
        for path in sorted(glob.glob(os.path.join(self.mailbox, "Maildir", "new", "*")),
                           key=os.path.getmtime):
            with open(path, "rb") as f:
                out.append(f.read())
        return out


class AioReceiver:
    def __init__(self, name, base, address, cert, port=25, min_tls="TLSv1.2",
                 max_tls="TLSv1.3", reject_rcpt=None, rset_reply=None,
                 mail_reply=None, data_extra=None, lmtp=False, pipelining=False,
                 max_messages=0, max_session=0):
        self.name = name
        self.base = base
        self.address = address
        self.addresses = [address]
        self.port = port
        self.store = os.path.join(base, "store")
        self.events = os.path.join(base, "events.jsonl")
        self.logfile = os.path.join(base, "aiosmtpd.log")
        self.args = ["/usr/bin/python3", os.path.join(HERE, "aioreceiver.py"),
                     "--listen", "%s:%d" % (address, port), "--chain", cert.chain,
                     "--store", self.store, "--events", self.events,
                     "--min-tls", min_tls, "--max-tls", max_tls]
        if reject_rcpt:
            self.args += ["--reject-rcpt", reject_rcpt]
        if rset_reply:
            self.args += ["--rset-reply", rset_reply]
        if mail_reply:
            self.args += ["--mail-reply", mail_reply]
        if data_extra:
            self.args += ["--data-extra", data_extra]
        if lmtp:
            self.args += ["--lmtp"]
        if pipelining:
            self.args += ["--pipelining"]
        if max_messages:
            self.args += ["--max-messages", str(max_messages)]
        if max_session:
            self.args += ["--max-session", str(max_session)]
        self.proc = None
        os.makedirs(base, exist_ok=True)

    def start(self):
        log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=log,
                                     start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            if any(e["ev"] == "ready" for e in self._events()):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        with open(self.logfile, errors="replace") as f:
            raise RuntimeError("aiosmtpd receiver did not start:\n" + f.read()[-2000:])

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def _events(self):
        try:
            with open(self.events) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def counts(self, address=None):
        c = Counts()
        for e in self._events():
            if e["ev"] == "connect":
                c.connections += 1
            elif e["ev"] == "tls":
                c.handshakes += 1
                c.resumed += e["resumed"]
                c.tls.append((e["version"], e["cipher"]))
            elif e["ev"] == "message":
                c.messages += 1
                c.plaintext_messages += not e["tls"]
        return c

    def peak_connections(self, slack=0.5):
        """The most connections that were open at this receiver at once.  A
        connection that closed less than slack seconds after another one
        opened is not counted as open beside it: the receiver sees both in
        one turn of its event loop, in either order."""
        opened, closed = {}, {}
        for e in self._events():
            if e["ev"] == "connect":
                opened[e["conn"]] = e["t"]
            elif e["ev"] == "close":
                closed[e["conn"]] = e["t"]
        peak = 0
        for c, t in opened.items():
            peak = max(peak, sum(1 for d, u in opened.items()
                                 if u <= t and closed.get(d, float("inf")) > t + slack))
        return peak

    def rsets(self):
        """The replies that this receiver gave to RSET, in order."""
        return [e["reply"] for e in self._events() if e["ev"] == "rset"]

    def message_events(self):
        return [e for e in self._events() if e["ev"] == "message"]

    def messages(self):
        out = []
        for e in self._events():
            if e["ev"] == "message":
                with open(e["file"], "rb") as f:
                    out.append(f.read())
        return out

    def message_ids(self):
        from .mailgen import header
        return [header(m, "Message-ID") for m in self.messages()]

    def log_tail(self, n=30):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return ""


def port_open(address, port):
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False
