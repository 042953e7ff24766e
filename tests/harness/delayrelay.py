#!/usr/bin/python3
"""A TCP relay that adds a fixed network delay, as a WAN path would.

This kernel has no netem qdisc, so latency comes from user space: the relay
listens on an address and port, and for every connection it accepts it
connects to the target, then forwards every chunk of bytes in each
direction one fixed one-way delay after it arrived, in order.  A round trip
through the relay costs 2 * delay.  TLS stays end to end.

    relay = DelayRelay("127.0.7.1", 25, "127.0.7.2", 25, delay=0.05)
    relay.start() ... relay.stop()

TCP connect: the kernel completes the client's handshake at once, so the
client's connect() returns at once.  On a WAN the server's first byte (an
SMTP greeting) reaches the client 2 RTT after connect() was called: 1 RTT
for SYN and SYN-ACK, half a round trip for the ACK to reach the server and
half for the greeting to come back.  The relay therefore connects to the
target connect_delay after the accept (default 3 * delay) and the greeting
takes one more delay back: 4 * delay = 2 RTT, as on a WAN.  Bytes that the
client sends before that wait for the upstream connection.

End of stream: an EOF (half-close) from one side is passed on, after the
delay, as a shutdown of the writing side towards the other; the connection
is closed when both directions have ended.  A reset (or a failed upstream
connect) from one side resets the other side after the delay (RST, with
SO_LINGER 0), after the bytes that arrived before it; bytes still queued
towards the side that reset are dropped, as a reset does.

For analysis, every connection keeps a trace: (time at the relay,
direction "up" (client to target) or "down", bytes) for every chunk as it
arrived at the relay, plus the accept time, the local port of the upstream
connection (to match the target's log, e.g. smtpd_client_port_logging) and
how it ended.  Times are time.time().

As a program:  delayrelay.py LISTEN_ADDR:PORT TARGET_ADDR:PORT --rtt 0.1
"""

import argparse
import asyncio
import signal
import socket
import struct
import threading
import time

EOF = "eof"
RESET = "reset"


class RelayConn:
    """One relayed connection and its trace."""

    def __init__(self, n, peer):
        self.n = n
        self.peer = peer                # client (address, port)
        self.accepted = time.time()
        self.connected = None           # upstream connect done
        self.upstream_port = None       # local port of the upstream socket
        self.trace = []                 # (time, "up"|"down", nbytes)
        self.up = self.down = 0
        self.ended = {}                 # direction -> EOF or RESET
        self.closed = None
        self.how = None                 # "closed" or "reset" or "connect failed"

    def chunks(self, direction):
        return [(t, n) for t, d, n in self.trace if d == direction]


def _reset(writer):
    """Close with RST (SO_LINGER 0)."""
    if writer is None:
        return
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class DelayRelay:
    def __init__(self, address, port, target, target_port, delay=0.05,
                 connect_delay=None):
        self.address, self.port = address, port
        self.target = (target, target_port)
        self.delay = delay
        self.connect_delay = 3 * delay if connect_delay is None else connect_delay
        self.name = "delayrelay %s:%d" % (address, port)
        self.conns = []
        self.running = False
        self.loop = None
        self.thread = None
        self._server = None
        self._tasks = set()
        self._ready = threading.Event()
        self._error = None

    # -- life cycle (in the caller's thread) ------------------------------

    def start(self):
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        if not self.running:
            raise RuntimeError("%s did not start" % self.name)

    def stop(self):
        if not self.running or self.loop is None:
            return
        self.running = False
        try:
            self.loop.call_soon_threadsafe(self._shutdown)
        except RuntimeError:            # loop already closed
            pass
        self.thread.join(10)

    def open_conns(self):
        return [c for c in self.conns if c.how is None]

    # -- the event loop (in its own thread) ---------------------------------

    def _run(self):
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._serve())
        except Exception as e:          # reported to start()
            self._error = e
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self):
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(
            self._accept, self.address, self.port, reuse_address=True, backlog=256)
        self.running = True
        self._ready.set()
        await self._stopped.wait()
        self._server.close()
        await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _shutdown(self):
        self._stopped.set()

    def _spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _accept(self, creader, cwriter):
        conn = RelayConn(len(self.conns) + 1, cwriter.get_extra_info("peername"))
        self.conns.append(conn)
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._relay(conn, creader, cwriter)
        finally:
            self._tasks.discard(task)

    async def _relay(self, conn, creader, cwriter):
        upq, downq = asyncio.Queue(), asyncio.Queue()
        swriter = None
        tasks = [self._spawn(self._read(conn, creader, "up", upq))]
        try:
            await asyncio.sleep(self.connect_delay)
            try:
                sreader, swriter = await asyncio.open_connection(*self.target)
            except OSError:
                conn.how = "connect failed"
                _reset(cwriter)
                return
            conn.connected = time.time()
            conn.upstream_port = swriter.get_extra_info("sockname")[1]
            tasks.append(self._spawn(self._read(conn, sreader, "down", downq)))
            pumps = [self._spawn(self._pump(upq, swriter, cwriter)),
                     self._spawn(self._pump(downq, cwriter, swriter))]
            tasks += pumps
            # Done when both directions ended (EOF passed on), or one of
            # them was reset (the pump reset both sides).
            for fut in asyncio.as_completed(pumps):
                if await fut == RESET:
                    conn.how = "reset"
                    break
            else:
                conn.how = "closed"
        finally:
            for t in tasks:
                t.cancel()
            if conn.how is None:        # cancelled: the relay is stopping
                conn.how = "reset"
                _reset(swriter)
                _reset(cwriter)
            for w in (cwriter, swriter):
                if w is not None and not w.transport.is_closing():
                    w.close()
            conn.closed = time.time()

    async def _read(self, conn, reader, direction, queue):
        """Read one side; queue (due time, bytes | EOF | RESET)."""
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionResetError, OSError):
                data = None
            now = time.time()
            if data:
                conn.trace.append((now, direction, len(data)))
                if direction == "up":
                    conn.up += len(data)
                else:
                    conn.down += len(data)
                queue.put_nowait((now + self.delay, data))
                continue
            conn.ended[direction] = EOF if data == b"" else RESET
            queue.put_nowait((now + self.delay, conn.ended[direction]))
            return

    async def _pump(self, queue, writer, other):
        """Forward the queued items to writer when they are due, in order.
        Returns EOF when the EOF was passed on, RESET when the connection
        was reset (both sides are then reset)."""
        while True:
            due, item = await queue.get()
            wait = due - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if item == RESET:
                    raise ConnectionResetError
                if item == EOF:
                    if writer.can_write_eof():
                        writer.write_eof()
                    await writer.drain()
                    return EOF
                writer.write(item)
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError, OSError):
                _reset(writer)
                _reset(other)
                return RESET


def parse_hostport(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


def main():
    ap = argparse.ArgumentParser(description="TCP relay with a fixed one-way delay")
    ap.add_argument("listen", help="ADDRESS:PORT to listen on")
    ap.add_argument("target", help="ADDRESS:PORT to connect to")
    ap.add_argument("--rtt", type=float, default=0.1,
                    help="round-trip time in seconds (one-way delay = rtt / 2)")
    ap.add_argument("--connect-delay", type=float,
                    help="seconds from accept to the upstream connect (default 1.5 * rtt)")
    args = ap.parse_args()
    relay = DelayRelay(*parse_hostport(args.listen), *parse_hostport(args.target),
                       delay=args.rtt / 2, connect_delay=args.connect_delay)
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    relay.start()
    print("%s -> %s:%d, one-way delay %.3f s, connect delay %.3f s" % (
        relay.name, relay.target[0], relay.target[1], relay.delay, relay.connect_delay),
        flush=True)
    try:
        while relay.thread.is_alive():
            relay.thread.join(1)
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop()
        for c in relay.conns:
            print("conn %d from %s: up %d down %d bytes, %s" % (
                c.n, c.peer, c.up, c.down, c.how or "open"))


if __name__ == "__main__":
    main()
