"""The admin port under abuse, on the real sirius-manager, with raw sockets: uploads without a key
(answered on their headers, never buffered: the manager's RSS is measured), a flood of idle
connections holding ADMIN_MAX_CONNECTIONS (probes and keyed clients still served; the limit's
warn line rate-limited), the header timeout (idle sockets, slowloris), the per-address limit,
huge headers, CL+TE smuggling, a pipelining flood, deeply nested JSON, an HTTP/0.9 request line,
an absurd chunk size, invalid UTF-8 in the path. Each time the offender gets the right answer and
the manager stays up and serves everyone else.

The RSS figures are printed (run with -s to see them)."""
import json
import os
import selectors
import socket
import time

from conftest import http, wait_for

KEY = "abuse-admin-Kx71"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIB = 1024 * 1024


def sanitized(pid):
    """An ASan build keeps freed memory in quarantine: its RSS says nothing about our bounds."""
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def start(manager_factory, **env):
    e = {"ADMIN_API_KEY": KEY, "APP_ENV": "production", "SIRIUS_LOG_LEVEL": "info"}
    e.update({k: str(v) for k, v in env.items()})
    return manager_factory(env=e)


def connect(m, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", m.admin_port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_close(s, limit=1 << 20, timeout=5.0):
    """Everything the server sends until it closes (or the timeout)."""
    s.settimeout(timeout)
    out = b""
    try:
        while len(out) < limit:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except (socket.timeout, ConnectionResetError):
        pass
    return out


def statuses(raw):
    """Status codes of the responses in raw, in order (bodies skipped by Content-Length)."""
    out = []
    while raw.startswith(b"HTTP/1.1 "):
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        out.append(int(head[9:12]))
        n = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v)
        raw = rest[n:]
    return out


def body_of(raw):
    head, _, rest = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return rest[:int(v)]
    return rest


def probes_ok(m):
    assert http("GET", m.admin_url + "/health", timeout=3)[0] == 200
    assert http("GET", m.admin_url + "/ready", timeout=3)[0] in (200, 503)  # served either way
    st, _, body = http("GET", m.admin_url + "/api/agents", headers=AUTH, timeout=3)
    assert st == 200, body


def upload_flood(m, n, size, key=None):
    """n connections each POST a size-byte body to /api/commands, all at once, through one
    selector: every connection reads while it writes, so an early answer is seen the moment it
    comes. The last byte of every body is held back until each connection has sent the rest (or
    was answered): the worst case, every body whole but one byte in the server at the same time.
    Returns the status each connection got (None: no answer)."""
    sel = selectors.DefaultSelector()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"POST /api/commands HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {size}\r\n\r\n").encode()
    chunk = b"x" * 65536
    conns = []
    for i in range(n):
        s = connect(m)
        s.setblocking(False)
        c = {"s": s, "out": head, "sent": 0, "in": b"", "done": False}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    deadline = time.monotonic() + 60
    open_n = n
    while open_n and time.monotonic() < deadline:
        # the last byte goes once every connection sent the rest or is done
        limit = size if all(c["done"] or c["sent"] >= size - 1 for c in conns) else size - 1
        for key_, ev in sel.select(timeout=0.2):
            c = key_.data
            s = c["s"]
            if ev & selectors.EVENT_READ:
                try:
                    b = s.recv(65536)
                except OSError:
                    b = b""
                c["in"] += b
                if not b or statuses(c["in"]):
                    c["done"] = True  # closed, or answered
            if not c["done"] and ev & selectors.EVENT_WRITE:
                if not c["out"] and c["sent"] < limit:
                    c["out"] = chunk[:min(len(chunk), limit - c["sent"])]
                    c["sent"] += len(c["out"])
                if c["out"]:
                    try:
                        k = s.send(c["out"])
                        c["out"] = c["out"][k:]
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        c["done"] = True
            if c["done"]:
                sel.unregister(s)
                s.close()
                open_n -= 1
    for c in conns:
        if not c["done"]:
            sel.unregister(c["s"])
            c["s"].close()
    sel.close()
    return [(statuses(c["in"]) or [None])[0] for c in conns]


def test_unauthenticated_uploads_are_not_buffered(manager_factory):
    """100 connections each sending a 4 MiB body without a key: each gets 401 on its headers,
    and the manager's peak RSS grows by a few MiB, not by 100 x 4 MiB."""
    m = start(manager_factory)
    pid = m.proc.pid
    probes_ok(m)
    rss0, hwm0 = status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")
    got = upload_flood(m, 100, 4 * MIB)
    rss1, hwm1 = status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")
    print(f"\nunauthenticated uploads, 100 x 4 MiB: VmRSS {rss0} -> {rss1} KiB, "
          f"VmHWM {hwm0} -> {hwm1} KiB (peak growth {(hwm1 - hwm0) / 1024:.1f} MiB)")
    assert got.count(401) == 100, got
    assert hwm1 - hwm0 < 48 * 1024, (hwm0, hwm1)
    assert m.proc.poll() is None
    probes_ok(m)


def test_buffered_bodies_are_bounded(manager_factory):
    """Keyed uploads are read, within ADMIN_MAX_BUFFERED_BYTES across connections: beyond it 503
    with Retry-After; each that fits is handed to its handler (here a 400: not JSON)."""
    m = start(manager_factory, ADMIN_MAX_BODY_BYTES=4 * MIB, ADMIN_MAX_BUFFERED_BYTES=8 * MIB)
    pid = m.proc.pid
    hwm0 = status_kb(pid, "VmHWM")
    got = upload_flood(m, 12, 4 * MIB, key=KEY)
    hwm1 = status_kb(pid, "VmHWM")
    print(f"\nkeyed uploads, 12 x 4 MiB, ADMIN_MAX_BUFFERED_BYTES 8 MiB: VmHWM {hwm0} -> {hwm1} "
          f"KiB; answers {sorted(got, key=str)}")
    assert set(got) <= {400, 503}, got
    assert got.count(400) >= 1 and got.count(503) >= 1, got
    assert hwm1 - hwm0 < 64 * 1024, (hwm0, hwm1)
    # one at a time they all fit
    st, _, body = http("POST", m.admin_url + "/api/commands", body=b"x" * (3 * MIB),
                       headers=AUTH, timeout=10)
    assert st == 400, body
    probes_ok(m)


def test_probes_and_keyed_clients_served_under_connection_flood(manager_factory):
    """ADMIN_MAX_CONNECTIONS idle sockets held (and 3x that attempted): /health, /ready and a keyed
    request are still answered, each newcomer closing the oldest idle socket; the limit's warn
    line is written at most about once a second."""
    m = start(manager_factory, ADMIN_MAX_CONNECTIONS=64, ADMIN_HEADER_TIMEOUT=60)
    held = []
    t0 = time.monotonic()
    for _ in range(3 * 64):
        held.append(connect(m))
    time.sleep(0.3)
    for _ in range(20):
        probes_ok(m)
        held.append(connect(m))  # keep the pressure on between probes
    # the sockets evicted were closed without a word; the rest are still open (once the
    # manager has accepted the last ones)
    time.sleep(0.5)
    alive = evicted = refused = 0
    for s in held:
        s.settimeout(0.01)
        try:
            b = s.recv(200)
            if b == b"":
                evicted += 1
            else:  # refused by the transport during the burst (beyond twice the limit)
                assert b.startswith(b"HTTP/1.1 503"), b
                refused += 1
        except (socket.timeout, BlockingIOError):
            alive += 1
        except ConnectionResetError:
            evicted += 1
    elapsed = time.monotonic() - t0
    assert alive <= 64, (alive, evicted, refused)
    assert evicted >= 20, (alive, evicted, refused)  # at least one per probe round
    lines = [e for e in m.log_events() if e.get("msg") == "connection limit reached"]
    print(f"\nflood: {len(held)} idle sockets opened: {evicted} evicted, {refused} refused by the "
          f"transport, {alive} open; {len(lines)} warn lines in {elapsed:.1f} s")
    assert 1 <= len(lines) <= elapsed + 2, len(lines)
    assert sum(e.get("evicted", 0) for e in lines) >= 1
    for s in held:
        s.close()
    assert m.proc.poll() is None
    probes_ok(m)


def test_header_timeout_idle_and_slowloris(manager_factory):
    m = start(manager_factory, ADMIN_HEADER_TIMEOUT=1, ADMIN_REQUEST_TIMEOUT=30)
    idle, slow = connect(m), connect(m)
    t0 = time.monotonic()
    slow.sendall(b"GET /health HTTP/1.1\r\nX-A: ")
    for _ in range(10):  # a byte every 200 ms: the deadline does not move
        try:
            slow.sendall(b"a")
        except OSError:
            break
        time.sleep(0.2)
    out_slow = read_until_close(slow)
    out_idle = read_until_close(idle)
    elapsed = time.monotonic() - t0
    assert out_idle == b""
    assert statuses(out_slow) == [408], out_slow
    assert elapsed < 5, elapsed
    probes_ok(m)


def test_per_address_limit(manager_factory):
    m = start(manager_factory, ADMIN_MAX_CONNECTIONS_PER_IP=4, ADMIN_HEADER_TIMEOUT=30)
    held = [connect(m) for _ in range(4)]
    time.sleep(0.2)
    extra = connect(m)
    raw = read_until_close(extra)
    assert statuses(raw) == [503], raw
    assert b"Retry-After: 1" in raw
    held.pop().close()
    wait_for(lambda: http("GET", m.admin_url + "/health", timeout=1)[0] == 200, timeout=5)
    for s in held:
        s.close()


def test_huge_headers(manager_factory):
    m = start(manager_factory)
    s = connect(m)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64 * 1024 + b"\r\n\r\n")
    assert statuses(read_until_close(s)) == [431]
    s = connect(m)  # many header lines
    s.sendall(b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) +
              b"\r\n")
    assert statuses(read_until_close(s)) == [431]
    probes_ok(m)


def test_cl_te_smuggling(manager_factory):
    m = start(manager_factory)
    for req in (
        b"POST /api/commands HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/commands HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        b"POST /api/commands HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n",
    ):
        s = connect(m)
        s.sendall(req)
        got = statuses(read_until_close(s))
        assert got == [400], (req, got)  # one answer: the smuggled request is never served
    probes_ok(m)


def test_pipelining_flood(manager_factory):
    m = start(manager_factory)
    pid = m.proc.pid
    hwm0 = status_kb(pid, "VmHWM")
    s = connect(m, timeout=10)
    n = 20000
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * n)  # the server holds what it cannot send
    probes_ok(m)  # others are served meanwhile
    got = b""
    s.settimeout(10)
    while got.count(b"HTTP/1.1 200") < n:
        b = s.recv(1 << 20)
        assert b, got.count(b"HTTP/1.1 200")
        got += b
    hwm1 = status_kb(pid, "VmHWM")
    print(f"\npipelining flood of {n} requests: VmHWM {hwm0} -> {hwm1} KiB")
    if not sanitized(pid):  # ASan's quarantine keeps every freed answer: its RSS says nothing
        assert hwm1 - hwm0 < 32 * 1024
    s.close()
    probes_ok(m)


def test_deeply_nested_json(manager_factory):
    m = start(manager_factory)
    for body in (b"[" * 100000, b'{"type":"scan","params":' + b'{"a":' * 50000 + b"1" +
                 b"}" * 50000 + b"}"):
        st, _, resp = http("POST", m.admin_url + "/api/commands", body=body, headers=AUTH,
                           timeout=10)
        assert st == 400, (st, resp)
    probes_ok(m)


def test_http09_and_absurd_chunk_size(manager_factory):
    m = start(manager_factory)
    s = connect(m)
    s.sendall(b"GET /health\r\n")
    raw = read_until_close(s)
    assert statuses(raw) == [400], raw  # never answered as if it were a request
    s = connect(m)
    t0 = time.monotonic()
    s.sendall(b"POST /api/commands HTTP/1.1\r\nHost: x\r\n" + f"Authorization: Bearer {KEY}\r\n"
              .encode() + b"Transfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\nabc")
    raw = read_until_close(s)
    assert statuses(raw) == [413], raw
    assert time.monotonic() - t0 < 3
    probes_ok(m)


def test_invalid_utf8_path_gets_valid_json(manager_factory):
    m = start(manager_factory)
    for path, key in ((b"/api/agents/\xff\xfe", True), (b"/nope/\xc3\x28\xed\xa0\x80", False),
                      (b"/api/nope/\xf8\x88\x80\x80\x80", True)):
        s = connect(m)
        auth = f"Authorization: Bearer {KEY}\r\n".encode() if key else b""
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n")
        raw = read_until_close(s)
        assert statuses(raw) == [404], raw
        body = body_of(raw)
        doc = json.loads(body.decode("utf-8"))  # strict: raises on invalid UTF-8
        assert "\ufffd" in doc["error"]["message"], doc
    probes_ok(m)
