"""gRPC request-buffering abuse (issue 12, item 1, and the smaller gRPC items), against a real
manager: peers that send all but the end of large messages and never finish them, on many
connections and streams. The manager's memory stays under a stated bound (VmRSS from
/proc/<pid>/status), the abusive connection is closed with GOAWAY ENHANCE_YOUR_CALM when it alone
goes past GRPC_MAX_BUFFERED_BYTES_PER_CONN, calls are refused with RESOURCE_EXHAUSTED past
GRPC_MAX_BUFFERED_BYTES, an incomplete message ends after GRPC_MESSAGE_TIMEOUT, and a
well-behaved grpcio client on a fresh connection is served throughout. No assertion is about
time: the waits are generous upper limits.

The abusive clients speak HTTP/2 with python3-h2; the well-behaved one is grpcio. Run with -s to
see the RSS figures."""
import socket
import struct

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions

from conftest import wait_for

MIB = 1 << 20
ENHANCE_YOUR_CALM = 0xB
PING = "/scan.AgentService/Ping"


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def sanitized(pid):
    """An ASan build keeps freed memory in quarantine: its RSS says nothing about our bounds."""
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


def prefix(length, compressed=0):
    return struct.pack(">BI", compressed, length)


def ping_ok(pb, m, timeout=10):
    with grpc.insecure_channel(m.grpc_addr) as ch:
        stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
        return stub.Ping(pb.agent_pb2.PingRequest(agent_id="good"), timeout=timeout).message == "pong"


class H2Client:
    """One HTTP/2 connection (python3-h2 over a blocking socket) that sends what it is told,
    including messages it never finishes."""

    def __init__(self, addr, timeout=10):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.streams = {}
        self.goaway = None
        self.eof = False
        self._flush()

    def _flush(self):
        data = self.conn.data_to_send()
        if data and not self.eof:
            try:
                self.sock.sendall(data)
            except OSError:
                self.eof = True

    def _st(self, sid):
        return self.streams.setdefault(sid, {"headers": [], "trailers": [], "ended": False,
                                             "reset": None})

    def recv(self, timeout):
        """Reads once; False on timeout or EOF."""
        if self.eof:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return False
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.eof = True
            return False
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                self._st(ev.stream_id)["headers"] = ev.headers
            elif isinstance(ev, h2.events.TrailersReceived):
                self._st(ev.stream_id)["trailers"] = ev.headers
            elif isinstance(ev, h2.events.StreamEnded):
                self._st(ev.stream_id)["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                self._st(ev.stream_id)["reset"] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        self._flush()
        return True

    def drain(self):
        """Reads whatever is waiting, without blocking."""
        while self.recv(0.001):
            pass

    def request(self, path=PING, extra=()):
        sid = self.conn.get_next_available_stream_id()
        self._st(sid)
        self.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                     (":authority", "manager"), (":path", path),
                                     ("content-type", "application/grpc"),
                                     ("te", "trailers")] + list(extra))
        self._flush()
        return sid

    def send(self, sid, data, end=False, wait=20):
        """Sends data within the flow-control windows; False when the stream or the connection
        went away first (refused, reset, GOAWAY)."""
        off = 0
        while off < len(data) or end:
            if self.eof or self.goaway is not None or self.status(sid) is not None:
                return False
            try:
                window = self.conn.local_flow_control_window(sid)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                return False
            n = min(window, self.conn.max_outbound_frame_size, len(data) - off)
            if n <= 0 and off < len(data):
                if not self.recv(wait) and not self.eof:
                    raise AssertionError("no WINDOW_UPDATE within %s s" % wait)
                continue
            last = end and off + n == len(data)
            try:
                self.conn.send_data(sid, data[off:off + n], end_stream=last)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return False
            off += n
            self._flush()
            if last:
                break
        return True

    def status(self, sid):
        st = self.streams.get(sid, {})
        for name, value in st.get("trailers", []) + st.get("headers", []):
            if name == "grpc-status":
                return int(value)
        return None

    def message(self, sid):
        st = self.streams.get(sid, {})
        for name, value in st.get("trailers", []) + st.get("headers", []):
            if name == "grpc-message":
                return value
        return ""

    def wait_status(self, sid, timeout=15):
        wait_for(lambda: self.status(sid) is not None or (self.recv(0.2) and False),
                 timeout=timeout, what=f"grpc-status on stream {sid}")
        return self.status(sid)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def hold_partial(c, claim, nbytes, path=PING):
    """Opens a stream and sends a prefix claiming `claim` bytes, then `nbytes` of them, and no
    more. Returns (stream id, whether all of it was accepted)."""
    sid = c.request(path)
    ok = c.send(sid, prefix(claim) + b"\0" * nbytes)
    return sid, ok


def test_partial_messages_memory_is_bounded(pb, manager_factory):
    """16 connections x 16 streams, each stream holding 480 KiB of a 4 MiB message it never
    finishes: 120 MiB if the manager kept it all. With GRPC_MAX_BUFFERED_BYTES = 32 MiB it holds
    at most that: RSS stays under base + 32 MiB + 32 MiB of slack (allocator, kernel socket
    buffers are not counted in RSS), some calls are refused RESOURCE_EXHAUSTED, no connection is
    over its own bound (7.5 MiB < 8 MiB) so none gets GOAWAY, and a grpcio Ping is served."""
    limit = 32 * MIB
    m = manager_factory(env={"GRPC_MAX_BUFFERED_BYTES": str(limit),
                             "GRPC_MESSAGE_TIMEOUT": "600", "SIRIUS_LOG_LEVEL": "info"})
    pid = m.proc.pid
    assert ping_ok(pb, m)
    base = rss_kib(pid)
    conns, streams, per_stream, claim = 16, 16, 480 * 1024, 4 * MIB - 1
    clients = []
    refused = accepted = 0
    try:
        for _ in range(conns):
            c = H2Client(m.grpc_addr)
            clients.append(c)
            for _ in range(streams):
                sid, ok = hold_partial(c, claim, per_stream)
                c.drain()
                if ok and c.status(sid) is None:
                    accepted += 1
                else:
                    refused += 1
        for c in clients:
            c.drain()
        held = rss_kib(pid)
        peak = rss_kib(pid, "VmHWM")
        statuses = [c.status(sid) for c in clients for sid in c.streams]
        good = ping_ok(pb, m)
        print(f"\nRSS base {base} KiB, holding {held} KiB (+{(held - base) // 1024} MiB), "
              f"peak {peak} KiB; streams accepted {accepted}, refused {refused} "
              f"(limit {limit // MIB} MiB, attempted {conns * streams * per_stream // MIB} MiB)")
        assert good
        assert all(c.goaway is None for c in clients)
        assert statuses.count(8) > 0, statuses  # RESOURCE_EXHAUSTED once the pool was full
        assert all(s in (None, 8) for s in statuses), statuses
        bound = base + (limit + 32 * MIB) // 1024
        if not sanitized(pid):
            assert held < bound, (base, held, bound)
            assert peak < bound, (base, peak, bound)
    finally:
        for c in clients:
            c.close()
    # the connections are gone: their buffers went back, and the manager serves on
    wait_for(lambda: ping_ok(pb, m), timeout=10, what="Ping after the abuse")
    after = rss_kib(pid)
    print(f"RSS after the abusive connections closed: {after} KiB")
    assert any("GRPC_MAX_BUFFERED_BYTES reached" in (e.get("msg") or "")
               for e in m.log_events())


def test_one_connection_over_its_bound_gets_enhance_your_calm(pb, manager_factory):
    """One connection holding more than GRPC_MAX_BUFFERED_BYTES_PER_CONN (8 MiB by default) of
    incomplete messages is closed with GOAWAY ENHANCE_YOUR_CALM; other clients are served."""
    m = manager_factory(env={"SIRIUS_LOG_LEVEL": "info"})
    pid = m.proc.pid
    base = rss_kib(pid)
    c = H2Client(m.grpc_addr)
    try:
        sent = 0
        for _ in range(16):
            _, ok = hold_partial(c, 4 * MIB - 1, MIB)
            if not ok:
                break
            sent += MIB
        wait_for(lambda: c.goaway is not None or (c.recv(0.2) and False), timeout=15,
                 what="GOAWAY")
        assert c.goaway == ENHANCE_YOUR_CALM
        assert sent <= 8 * MIB
        wait_for(lambda: c.eof or (c.recv(0.2) and False), timeout=15,
                 what="the connection to close")
        assert ping_ok(pb, m)
        held = rss_kib(pid)
        print(f"\nRSS base {base} KiB, after the ENHANCE_YOUR_CALM close {held} KiB")
        if not sanitized(pid):
            assert held < base + 8 * 1024 + 32 * 1024
    finally:
        c.close()
    assert any("ENHANCE_YOUR_CALM" in (e.get("msg") or "") for e in m.log_events())


def test_incomplete_message_times_out(pb, manager_factory):
    """GRPC_MESSAGE_TIMEOUT: a message that is not complete in time ends its call with
    DEADLINE_EXCEEDED (its buffer freed); the connection and other calls go on."""
    m = manager_factory(env={"GRPC_MESSAGE_TIMEOUT": "0.5"})
    c = H2Client(m.grpc_addr)
    try:
        sid, ok = hold_partial(c, 100000, 5000)
        assert ok
        assert c.wait_status(sid) == 4, c.streams[sid]
        assert "GRPC_MESSAGE_TIMEOUT" in c.message(sid)
        # a unary request whose message came whole but whose stream never ends is incomplete too
        sid = c.request()
        assert c.send(sid, prefix(0))
        assert c.wait_status(sid) == 4
        # the same connection still serves a complete request
        sid = c.request()
        assert c.send(sid, prefix(0), end=True)
        assert c.wait_status(sid) == 0
        assert c.goaway is None
    finally:
        c.close()
    assert ping_ok(pb, m)


def test_zero_grpc_timeout_is_deadline_exceeded(pb, manager):
    c = H2Client(manager.grpc_addr)
    try:
        for t in ("0n", "0m", "0S"):
            sid = c.request(extra=[("grpc-timeout", t)])
            c.send(sid, prefix(0), end=True)
            assert c.wait_status(sid) == 4, (t, c.streams[sid])
        sid = c.request(extra=[("grpc-timeout", "5S")])
        c.send(sid, prefix(0), end=True)
        assert c.wait_status(sid) == 0
    finally:
        c.close()
    assert ping_ok(pb, manager)


def test_two_messages_on_unary_ping_are_internal(pb, manager):
    req = pb.agent_pb2.PingRequest(agent_id="a").SerializeToString()
    one = prefix(len(req)) + req
    c = H2Client(manager.grpc_addr)
    try:
        sid = c.request()
        c.send(sid, one + one, end=True)
        assert c.wait_status(sid) == 13, c.streams[sid]
        assert "more than one request message" in c.message(sid)
        # split over two DATA frames the same
        sid = c.request()
        c.send(sid, one)
        c.send(sid, one, end=True)
        assert c.wait_status(sid) == 13
        # one message: pong
        sid = c.request()
        c.send(sid, one, end=True)
        assert c.wait_status(sid) == 0
    finally:
        c.close()


def test_bounds_below_one_message_are_raised_to_fit_it(pb, manager_factory):
    """Bounds set below GRPC_MAX_MESSAGE_BYTES are raised to it (logged): a message of 1 MiB,
    split over many DATA frames, still arrives with both bounds set to 64 KiB."""
    m = manager_factory(env={"GRPC_MAX_BUFFERED_BYTES_PER_CONN": "65536",
                             "GRPC_MAX_BUFFERED_BYTES": "65536",
                             "GRPC_MAX_MESSAGE_BYTES": str(2 * MIB)})
    with grpc.insecure_channel(m.grpc_addr) as ch:
        stub = pb.agent_pb2_grpc.AgentServiceStub(ch)
        r = stub.Ping(pb.agent_pb2.PingRequest(agent_id="x" * MIB), timeout=10)
        assert r.message == "pong"
    ev = [e for e in m.log_events() if "request buffer bounds raised" in (e.get("msg") or "")]
    fit = 2 * MIB + 16 * 4096  # one message, and 4 KiB for each other stream
    assert ev and ev[0].get("per_connection") == fit and ev[0].get("total") == fit, ev
