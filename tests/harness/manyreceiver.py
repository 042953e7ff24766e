"""One aiosmtpd process that receives for thousands of addresses at once.

Run as a program (Debian's /usr/bin/python3), inside a private network
namespace where all of 127.0.0.0/8 is local:
    manyreceiver.py (--listen 0.0.0.0:25 | --addresses FILE [--port 25]) \
        --chain server.chain.pem --events FILE [--nofile 65536]

It listens once on the wildcard address (in a private network namespace
that takes connections to every 127.x.y.z), or on port 25 of every
address that FILE lists (one a line), offers STARTTLS with the given
key+certificate chain, and appends one JSON line per event to FILE, each
with the local address the client connected to:
    {"ev": "ready"}
    {"ev": "connect", "conn": n, "addr": "127.0.1.2"}
    {"ev": "tls", "conn": n, "addr": ..., "version": ..., "resumed": bool}
    {"ev": "message", "conn": n, "addr": ..., "tls": bool, "msgid": ...,
     "rcpt": [...]}
    {"ev": "close", "conn": n, "addr": ...}
Messages are not stored (only their Message-ID is recorded): an idle TLS
connection costs this process a few kilobytes, so that one process holds
many thousands.  It raises its own descriptor limit to --nofile.  SIGTERM
stops it.
"""

import argparse
import asyncio
import itertools
import json
import re
import resource
import signal
import ssl

from aiosmtpd.smtp import SMTP

counter = itertools.count(1)
MSGID_RE = re.compile(rb"^Message-ID:\s*(\S+)", re.I | re.M)


class Recorder:
    def __init__(self, events):
        self.events = open(events, "a", buffering=1)

    def emit(self, **ev):
        self.events.write(json.dumps(ev) + "\n")

    def handle_STARTTLS(self, server, session, envelope):
        sslobj = session.ssl.get("ssl_object")
        self.emit(ev="tls", conn=server.conn_id, addr=server.local_addr,
                  version=sslobj.version() if sslobj else None,
                  resumed=bool(sslobj and sslobj.session_reused))
        return True

    async def handle_DATA(self, server, session, envelope):
        head = envelope.original_content.split(b"\r\n\r\n", 1)[0]
        m = MSGID_RE.search(head)
        self.emit(ev="message", conn=server.conn_id, addr=server.local_addr,
                  tls=server._tls_protocol is not None,
                  msgid=m.group(1).decode(errors="replace") if m else None,
                  rcpt=envelope.rcpt_tos)
        return "250 2.0.0 Ok: stored"


class ManySMTP(SMTP):
    def connection_made(self, transport):
        if self._original_transport is None:
            self.conn_id = next(counter)
            sock = transport.get_extra_info("sockname")
            self.local_addr = sock[0] if sock else None
            self.event_handler.emit(ev="connect", conn=self.conn_id, addr=self.local_addr)
        super().connection_made(transport)

    def connection_lost(self, exc):
        if getattr(self, "conn_id", None) is not None and not getattr(self, "_closed_ev", 0):
            self._closed_ev = 1
            self.event_handler.emit(ev="close", conn=self.conn_id, addr=self.local_addr)
        super().connection_lost(exc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="0.0.0.0:25")
    ap.add_argument("--addresses", help="file: one address to listen on a line")
    ap.add_argument("--port", type=int, default=25)
    ap.add_argument("--chain", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--hostname", default="many.test")
    ap.add_argument("--nofile", type=int, default=65536)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, args.nofile)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.chain)
    rec = Recorder(args.events)
    if args.addresses:
        with open(args.addresses) as f:
            listen = [(a.strip(), args.port) for a in f if a.strip()]
    else:
        host, port = args.listen.rsplit(":", 1)
        listen = [(host, int(port))]

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    servers = [loop.run_until_complete(loop.create_server(
        lambda: ManySMTP(rec, hostname=args.hostname, tls_context=ctx,
                         require_starttls=False, data_size_limit=64 << 20,
                         decode_data=False, timeout=3600, loop=loop),
        host=host, port=port, reuse_address=True, backlog=1024))
        for host, port in listen]
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    rec.emit(ev="ready")
    try:
        loop.run_forever()
    finally:
        for server in servers:
            server.close()


if __name__ == "__main__":
    main()
