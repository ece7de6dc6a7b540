"""Shared fixtures of the integration tests: the real sirius-manager and sirius-agent programs
started on free loopback ports, and Python gRPC stubs generated from proto/ with grpc_tools.

Environment: SM_BUILD_DIR (default: build) names the meson build directory holding the
programs."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.abspath(os.environ.get("SM_BUILD_DIR", os.path.join(ROOT, "build")))
MANAGER_BIN = os.path.join(BUILD, "src", "sirius-manager")
AGENT_BIN = os.path.join(BUILD, "src", "sirius-agent")


_ports_handed_out = set()


def free_port():
    """A loopback port nobody listens on now, and never one this test run handed out before:
    the kernel may give a port that was just bound and closed again, and two listeners of one
    manager would then collide (seen: gRPC and admin both on the same port, the admin bind
    failing with "address already in use")."""
    for _ in range(1000):
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port
    raise RuntimeError("no fresh loopback port")


def wait_for(pred, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def http(method, url, body=None, headers=None, timeout=5.0):
    """Returns (status, headers, parsed JSON or raw text)."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        if isinstance(data, str):
            data = data.encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status, rh = r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw = e.read()
        status, rh = e.code, dict(e.headers)
    try:
        return status, rh, json.loads(raw)
    except ValueError:
        return status, rh, raw.decode(errors="replace")


class Manager:
    """One sirius-manager process on free loopback ports."""

    def __init__(self, tmpdir, env=None, args=None):
        self.grpc_port = free_port()
        self.admin_port = free_port()
        self.metrics_port = free_port()
        self.grpc_addr = f"127.0.0.1:{self.grpc_port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.log_path = os.path.join(tmpdir, f"manager-{self.grpc_port}.log")
        e = dict(os.environ)
        e.update({
            "GRPC_SERVER_ADDR": self.grpc_addr,
            "ADMIN_API_ADDR": f"127.0.0.1:{self.admin_port}",
            "METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
            "APP_ENV": "development",
            "SIRIUS_LOG_FORMAT": "json",
            "SIRIUS_LOG_LEVEL": "debug",
        })
        e.update(env or {})
        self.env = e
        self.args = list(args or [])
        self.proc = None
        self.log = None

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([MANAGER_BIN] + self.args, env=self.env,
                                     stdout=self.log, stderr=self.log)
        if wait:
            wait_for(lambda: self.proc.poll() is None and self.health() == 200,
                     timeout=15, what="manager /health")
        return self

    def health(self):
        try:
            return http("GET", self.admin_url + "/health", timeout=1)[0]
        except OSError:
            return None

    def get(self, path, **kw):
        return http("GET", self.admin_url + path, **kw)

    def agents(self):
        status, _, body = self.get("/api/agents")
        assert status == 200, body
        return body

    def agent_ids(self):
        return sorted(a["id"] for a in self.agents()["agents"])

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def log_events(self):
        out = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("manager did not exit after %s" % sig)
        finally:
            self.log.close()


class Agent:
    """A sirius-agent process (one or --count N simulated agents)."""

    def __init__(self, tmpdir, server, args=None, env=None):
        self.log_path = os.path.join(tmpdir, f"agent-{time.monotonic_ns()}.log")
        self.cmd = [AGENT_BIN, "--server", server] + list(args or [])
        e = dict(os.environ)
        e.update(env or {})
        self.env = e
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=self.log)
        return self

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """Python modules generated from proto/: returns a namespace with agent_pb2, agent_pb2_grpc,
    health_pb2, health_pb2_grpc."""
    out = str(tmp_path_factory.mktemp("pb"))
    from grpc_tools import protoc
    proto_dir = os.path.join(ROOT, "proto")
    for name in ("agent.proto", "health.proto"):
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}",
                          f"--grpc_python_out={out}", os.path.join(proto_dir, name)])
        assert rc == 0, f"protoc failed for {name}"
    sys.path.insert(0, out)
    import agent_pb2, agent_pb2_grpc, health_pb2, health_pb2_grpc  # noqa: E401

    class NS:
        pass
    ns = NS()
    ns.agent_pb2, ns.agent_pb2_grpc = agent_pb2, agent_pb2_grpc
    ns.health_pb2, ns.health_pb2_grpc = health_pb2, health_pb2_grpc
    return ns


@pytest.fixture
def manager_factory(tmp_path):
    started = []

    def make(env=None, args=None, start=True):
        m = Manager(str(tmp_path), env=env, args=args)
        started.append(m)
        return m.start() if start else m
    yield make
    for m in started:
        with contextlib.suppress(Exception):
            m.stop()


@pytest.fixture
def manager(manager_factory):
    return manager_factory()


@pytest.fixture
def agent_factory(tmp_path):
    started = []

    def make(server, args=None, env=None):
        a = Agent(str(tmp_path), server, args=args, env=env)
        started.append(a)
        return a.start()
    yield make
    for a in started:
        with contextlib.suppress(Exception):
            a.stop()
