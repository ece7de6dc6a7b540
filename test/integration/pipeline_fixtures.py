"""Shared pieces of the end-to-end pipeline tests (test_pipeline_*.py): a real redis-server on a
free port in a temporary folder (append-only file fsynced on every write, so its data survives
its own restart), the throwaway rabbitmq-server of scripts/rabbitmq-test-broker.sh, AMQP helpers
built on pika (confirmed publishing, a result collector that survives broker restarts), a tiny
RESP client for checking the store, and a sirius-manager wired to both.

Import what a test module needs; the fixtures `broker` (module scope) and `redis` (function scope)
are defined here and must be imported by name into the test module to be visible to pytest."""
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import Manager, free_port, http, wait_for

pika = pytest.importorskip("pika")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROKER_SCRIPT = os.path.join(ROOT, "scripts", "rabbitmq-test-broker.sh")
FINAL = {"completed", "failed", "timed_out", "cancelled", "expired"}


# ---- redis ---------------------------------------------------------------------------------

class RedisServer:
    """One redis-server on 127.0.0.1:<free port>, data in its own folder. restart() reuses the
    port and the folder; with appendfsync always every acknowledged write survives kill()."""

    def __init__(self, tmpdir):
        self.port = free_port()
        self.dir = os.path.join(tmpdir, f"redis-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "redis.log")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir, "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--daemonize", "no", "--logfile", self.log_path,
             "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is None and self.cmd("PING") == "PONG",
                 timeout=15, what="redis-server PING")
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self):
        self.stop()
        return self.start()

    def cmd(self, *args):
        return self.pipeline([args])[0]

    def pipeline(self, cmds, timeout=10.0):
        """Sends every command at once and returns the replies in order (errors as
        RespError instances)."""
        out = bytearray()
        for c in cmds:
            out += b"*%d\r\n" % len(c)
            for a in c:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
        with contextlib.closing(socket.create_connection(("127.0.0.1", self.port),
                                                         timeout=timeout)) as s:
            s.sendall(out)
            r = _RespReader(s)
            return [r.read() for _ in cmds]


class RespError(Exception):
    pass


class _RespReader:
    def __init__(self, sock):
        self.sock, self.buf = sock, bytearray()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        i = self.buf.index(b"\r\n")
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data = bytes(self.buf[:n])
        del self.buf[:n + 2]
        return data

    def read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RespError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode(errors="replace")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError(f"bad RESP line {line!r}")


@pytest.fixture
def redis(tmp_path):
    r = RedisServer(str(tmp_path)).start()
    yield r
    r.kill()


def store_statuses(r, ids, prefix="sm:"):
    """{id: status name or None} read from the store's `<prefix>cmd:<id>` hashes."""
    ids = list(ids)
    replies = r.pipeline([("HGET", f"{prefix}cmd:{i}", "s") for i in ids])
    return dict(zip(ids, replies))


# ---- rabbitmq ------------------------------------------------------------------------------

class Broker:
    """The throwaway rabbitmq-server of scripts/rabbitmq-test-broker.sh."""

    def __init__(self):
        out = subprocess.run([BROKER_SCRIPT, "start"], check=True, capture_output=True,
                             text=True, timeout=120).stdout.split()
        self.port, self.dir = int(out[0]), out[1]
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.seq = 0

    def queues(self, name):
        """Distinct (command queue, result queue) names for one test."""
        self.seq += 1
        return f"{name}-{self.seq}-cmd", f"{name}-{self.seq}-res"

    def kill(self):
        subprocess.run([BROKER_SCRIPT, "kill", self.dir], check=True, timeout=60)

    def restart(self):
        out = subprocess.run([BROKER_SCRIPT, "restart", self.dir], check=True,
                             capture_output=True, text=True, timeout=120).stdout.split()
        assert int(out[0]) == self.port

    def stop(self):
        subprocess.run([BROKER_SCRIPT, "stop", self.dir], check=False, timeout=60)


@pytest.fixture(scope="module")
def broker():
    b = Broker()
    try:
        yield b
    finally:
        b.stop()


def amqp_channel(port, confirm=True):
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", port, heartbeat=30, connection_attempts=1, socket_timeout=5))
    ch = conn.channel()
    if confirm:
        ch.confirm_delivery()
    return conn, ch


def declare(port, *queues):
    conn, ch = amqp_channel(port, confirm=False)
    try:
        for q in queues:
            ch.queue_declare(q, durable=True)
    finally:
        conn.close()


def publish(port, queue, messages, reply_to=None, correlation_id=None):
    """Publishes each message (dict -> JSON, str/bytes as is), persistent and confirmed. A
    message may also be a (body, BasicProperties kwargs) pair."""
    conn, ch = amqp_channel(port)
    try:
        ch.queue_declare(queue, durable=True)
        for m in messages:
            kw = {}
            if isinstance(m, tuple):
                m, kw = m
            body = m if isinstance(m, bytes) else (m.encode() if isinstance(m, str)
                                                   else json.dumps(m).encode())
            props = dict(delivery_mode=2, content_type="application/json")
            if reply_to:
                props["reply_to"] = reply_to
            if correlation_id:
                props["correlation_id"] = correlation_id
            props.update(kw)
            ch.basic_publish("", queue, body, pika.BasicProperties(**props), mandatory=False)
    finally:
        conn.close()


class Collector:
    """Consumes one queue, keeping every message (acked once recorded). Reconnects by itself
    when the broker goes away, so results published after a broker restart are seen too."""

    def __init__(self, port, queue):
        self.port, self.queue = port, queue
        self.messages = []                 # (body dict or raw text, properties)
        self.by_id = collections.defaultdict(list)
        self.conn = self.ch = None

    def _connect(self):
        self.conn, self.ch = amqp_channel(self.port, confirm=False)
        self.ch.queue_declare(self.queue, durable=True)
        self.ch.basic_qos(prefetch_count=1000)
        self.ch.basic_consume(self.queue, self._on_msg, auto_ack=False)

    def _on_msg(self, ch, method, props, body):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = body.decode(errors="replace")
        self.messages.append((doc, props))
        if isinstance(doc, dict) and "id" in doc:
            self.by_id[doc["id"]].append(doc)
        ch.basic_ack(method.delivery_tag)

    def poll(self, seconds=0.2):
        try:
            if self.conn is None or self.conn.is_closed:
                self._connect()
            self.conn.process_data_events(time_limit=seconds)
        except (pika.exceptions.AMQPError, OSError):
            self.conn = self.ch = None
            time.sleep(min(seconds, 0.5))

    def wait(self, pred, timeout=30.0, what="messages"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(0.1)
            if pred(self):
                return
        raise AssertionError(f"timed out waiting for {what} on {self.queue} "
                             f"({len(self.messages)} messages)")

    def final(self, cid):
        """The first final-status message of command cid, or None."""
        for d in self.by_id.get(cid, []):
            if d.get("status") in FINAL:
                return d
        return None

    def wait_final(self, ids, timeout=30.0):
        ids = list(ids)
        self.wait(lambda s: all(s.final(i) for i in ids), timeout,
                  what=f"final results of {len(ids)} commands "
                       f"(missing e.g. {[i for i in ids if not self.final(i)][:5]})")
        return {i: self.final(i) for i in ids}

    def close(self):
        with contextlib.suppress(Exception):
            if self.conn and self.conn.is_open:
                self.conn.close()


# ---- the manager on redis + rabbitmq ---------------------------------------------------------

def pipeline_env(broker_, redis_, cmd_q, res_q, **extra):
    env = {
        "RABBITMQ_URL": broker_.url,
        "AMQP_COMMAND_QUEUE": cmd_q,
        "AMQP_RESULT_QUEUE": res_q,
        "INSTANCE_ID": "e2e",
    }
    if redis_ is not None:
        env.update({"VALKEY_HOST": "127.0.0.1", "VALKEY_PORT": str(redis_.port)})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_manager(tmpdir, env, started):
    m = Manager(tmpdir, env=env)
    started.append(m)
    m.start()
    wait_for(lambda: m.get("/ready", timeout=1)[0] == 200, timeout=20, what="manager /ready")
    return m


def same_ports_manager(old, tmpdir, started):
    """A new sirius-manager on the ports (and settings) of `old`, e.g. after it was killed."""
    m = Manager(tmpdir, env=old.env)
    m.grpc_port, m.admin_port, m.metrics_port = old.grpc_port, old.admin_port, old.metrics_port
    m.grpc_addr, m.admin_url = old.grpc_addr, old.admin_url
    m.log_path = old.log_path + ".restart"
    started.append(m)
    return m


def kill9(m):
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=10)
    m.log.close()


def rest_commands_available(m):
    """Whether this build serves the commands REST API (GET /api/commands)."""
    try:
        status = http("GET", m.admin_url + "/api/commands?limit=1", timeout=2)[0]
    except OSError:
        return False
    return status == 200


def command_ids_listed(m, ids):
    """{id: status} through GET /api/commands/{id}."""
    out = {}
    for i in ids:
        st, _, body = m.get(f"/api/commands/{i}")
        out[i] = body.get("status") if st == 200 and isinstance(body, dict) else None
    return out
