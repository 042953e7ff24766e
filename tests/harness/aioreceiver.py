"""A second SMTP server implementation as a test peer: Debian's aiosmtpd.

Run as a program (Debian's /usr/bin/python3):
    aioreceiver.py --listen 127.0.0.20:25 --chain server.chain.pem \
        --store DIR --events FILE [--min-tls TLSv1.2] [--max-tls TLSv1.3]

It offers STARTTLS with the given key+certificate chain, stores every message
as DIR/<n>.eml (bytes as received, CRLF line ends, dots unstuffed), and
appends one JSON line per event to FILE:
    {"ev": "ready"}
    {"ev": "connect", "conn": n, "t": time.monotonic()}
    {"ev": "close", "conn": n, "t": time.monotonic()}
    {"ev": "tls", "conn": n, "version": ..., "cipher": ..., "resumed": bool}
    {"ev": "message", "conn": n, "tls": bool, "file": ..., "size": ...}
    {"ev": "rset", "conn": n, "reply": ...}
SIGTERM stops it.

Quirks of real servers, for tests:
    --reject-rcpt LOCALPART  RCPT TO for that local part gets 550
    --rset-reply "502 ..."   RSET gets this reply and does NOT reset the
                             mail transaction (as some appliances and minimal
                             servers do): a later MAIL gets "503 nested MAIL"
    --mail-reply "550 ..."   MAIL FROM gets this reply, but the sender is
                             recorded anyway (a broken server): RCPT and DATA
                             are accepted
    --data-extra "421 ..."   the reply to end of data is followed, in the
                             same write, by this unsolicited line
    --pipelining             announce PIPELINING (aiosmtpd reads commands
                             one line at a time, so pipelined input works)
    --max-messages N         after N messages on a connection, the next MAIL
                             FROM closes the connection without a reply (as
                             Yahoo's servers do after 20 messages)
    --max-session SECONDS    end a session that has lasted this long: when it
                             is idle, with an unsolicited "421 4.4.2" and a
                             close; in a mail transaction, with that reply to
                             the next command after the transaction (servers
                             such as Microsoft's end sessions after about 20
                             minutes)
    Both log {"ev": "limit", "conn": n, "what": "messages"|"session"}.
"""

import argparse
import asyncio
import itertools
import json
import os
import signal
import ssl
import time

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

counter = itertools.count(1)


class Recorder:
    def __init__(self, store, events, reject_rcpt=None, mail_reply=None,
                 data_extra=None):
        self.store = store
        self.events = open(events, "a", buffering=1)
        self.seq = itertools.count(1)
        self.reject_rcpt = reject_rcpt
        self.mail_reply = mail_reply
        self.data_extra = data_extra

    def emit(self, **ev):
        self.events.write(json.dumps(ev) + "\n")

    # aiosmtpd hooks
    def handle_STARTTLS(self, server, session, envelope):
        sslobj = session.ssl.get("ssl_object")
        self.emit(ev="tls", conn=server.conn_id,
                  version=sslobj.version() if sslobj else None,
                  cipher=sslobj.cipher()[0] if sslobj else None,
                  resumed=bool(sslobj and sslobj.session_reused))
        return True

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return self.mail_reply or "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_rcpt and address.split("@")[0] == self.reject_rcpt:
            return "550 5.1.1 <%s>: Recipient address rejected" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(self.store, "%06d.eml" % next(self.seq))
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(path + ".tmp", path)
        self.emit(ev="message", conn=server.conn_id, tls=server._tls_protocol is not None,
                  file=path, size=len(envelope.original_content),
                  mail_from=envelope.mail_from, rcpt=envelope.rcpt_tos)
        if self.data_extra:
            return "250 2.0.0 Ok: stored\r\n" + self.data_extra
        return "250 2.0.0 Ok: stored"


class PipeliningRecorder(Recorder):
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", responses[-1]]


class Counting:
    rset_reply = None
    max_messages = 0
    max_session = 0

    def connection_made(self, transport):
        if self._original_transport is None:
            self.conn_id = next(counter)
            self.messages = 0
            self.session_over = False
            self._conn_closed = False
            self.event_handler.emit(ev="connect", conn=self.conn_id,
                                    t=time.monotonic())
            if self.max_session:
                self.loop.call_later(self.max_session, self._session_limit)
        super().connection_made(transport)

    def connection_lost(self, exc):
        if not self._conn_closed:
            self._conn_closed = True
            self.event_handler.emit(ev="close", conn=self.conn_id,
                                    t=time.monotonic())
        super().connection_lost(exc)

    def _limit(self, what, reply=None):
        self.event_handler.emit(ev="limit", conn=self.conn_id, what=what)
        if reply:
            self.transport.write(reply.encode() + b"\r\n")
        self.transport.close()

    def _session_limit(self):
        if self.transport is None or self.transport.is_closing():
            return
        if self.envelope is None or self.envelope.mail_from is None:
            self._limit("session", "421 4.4.2 Session time limit exceeded")
        else:
            self.session_over = True

    async def smtp_MAIL(self, arg):
        if self.session_over:
            return self._limit("session", "421 4.4.2 Session time limit exceeded")
        if self.max_messages and self.messages >= self.max_messages:
            return self._limit("messages")
        return await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg):
        r = await super().smtp_DATA(arg)
        self.messages += 1
        return r

    async def smtp_RSET(self, arg):
        if self.session_over:
            return self._limit("session", "421 4.4.2 Session time limit exceeded")
        return await self._rset(arg)

    async def _rset(self, arg):
        if self.rset_reply is None:
            self.event_handler.emit(ev="rset", conn=self.conn_id, reply="250")
            return await super().smtp_RSET(arg)
        # A server that rejects RSET and keeps the mail transaction.
        self.event_handler.emit(ev="rset", conn=self.conn_id,
                                reply=self.rset_reply)
        await self.push(self.rset_reply)


class CountingSMTP(Counting, SMTP):
    pass


class CountingLMTP(Counting, LMTP):
    pass


def tls_version(name):
    return {"TLSv1.2": ssl.TLSVersion.TLSv1_2,
            "TLSv1.3": ssl.TLSVersion.TLSv1_3}[name]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--chain", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--hostname", default="aiosmtpd.test")
    ap.add_argument("--min-tls", default="TLSv1.2")
    ap.add_argument("--max-tls", default="TLSv1.3")
    ap.add_argument("--reject-rcpt", default=None)
    ap.add_argument("--rset-reply", default=None)
    ap.add_argument("--mail-reply", default=None)
    ap.add_argument("--data-extra", default=None)
    ap.add_argument("--lmtp", action="store_true")
    ap.add_argument("--pipelining", action="store_true")
    ap.add_argument("--max-messages", type=int, default=0)
    ap.add_argument("--max-session", type=float, default=0)
    args = ap.parse_args()
    Counting.rset_reply = args.rset_reply
    Counting.max_messages = args.max_messages
    Counting.max_session = args.max_session
    proto = CountingLMTP if args.lmtp else CountingSMTP

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.chain)
    ctx.minimum_version = tls_version(args.min_tls)
    ctx.maximum_version = tls_version(args.max_tls)
    os.makedirs(args.store, exist_ok=True)
    rec = (PipeliningRecorder if args.pipelining else Recorder)(args.store, args.events, args.reject_rcpt, args.mail_reply,
                   args.data_extra)
    host, port = args.listen.rsplit(":", 1)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(
        lambda: proto(rec, hostname=args.hostname, tls_context=ctx,
                      require_starttls=False, data_size_limit=64 << 20,
                      decode_data=False, loop=loop),
        host=host, port=int(port), reuse_address=True))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    rec.emit(ev="ready")
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
