"""Helpers of the test_grpc_* tests (no tests here): Python grpcio agents (a Connect stream
driven from the test), certificates made with the openssl command, and nghttp runs for raw
HTTP/2."""
import os
import queue
import re
import subprocess
import threading
import time

import grpc

from conftest import wait_for


class AgentStream:
    """One scan.AgentService/Connect call: the test puts AgentMessages, a thread collects the
    CommandMessages and the final status."""

    def __init__(self, pb, channel, metadata=None, timeout=30):
        self.pb = pb
        self.q = queue.Queue()
        self.commands = []
        self.code = None
        self.details = None
        self.done = threading.Event()
        stub = pb.agent_pb2_grpc.AgentServiceStub(channel)
        self.call = stub.Connect(self._requests(), metadata=metadata, timeout=timeout)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _requests(self):
        while True:
            m = self.q.get()
            if m is None:
                return
            yield m

    def _read(self):
        try:
            for c in self.call:
                self.commands.append(c)
            self.code = self.call.code()
            self.details = self.call.details()
        except grpc.RpcError as e:
            self.code = e.code()
            self.details = e.details()
        finally:
            self.done.set()

    def send(self, **fields):
        self.q.put(self.pb.agent_pb2.AgentMessage(**fields))

    def register(self, agent_id, status=None, **meta):
        meta.setdefault("hostname", f"host-{agent_id}")
        meta.setdefault("version", "1.2.3")
        self.send(agent_id=agent_id, status=status or self.pb.agent_pb2.IDLE, metadata=meta)

    def heartbeat(self, agent_id="", cpu=10.0, mem=20.0, active=0, status=None):
        pb = self.pb.agent_pb2
        self.send(agent_id=agent_id, status=status or pb.IDLE,
                  heartbeat=pb.HeartbeatMessage(timestamp=int(time.time()), cpu_usage=cpu,
                                                memory_usage=mem, active_commands=active))

    def close(self):
        """Half-closes the request side (the agent leaves)."""
        self.q.put(None)

    def cancel(self):
        self.call.cancel()

    def wait(self, timeout=10):
        assert self.done.wait(timeout), "the Connect stream did not end"
        return self.code


def agent(m, agent_id):
    """The agent as GET /api/agents/{id} reports it, or None."""
    status, _, body = m.get(f"/api/agents/{agent_id}")
    return body if status == 200 else None


def wait_registered(m, agent_id, timeout=10):
    return wait_for(lambda: agent(m, agent_id), timeout=timeout,
                    what=f"agent {agent_id} registered")


def wait_gone(m, agent_id, timeout=10):
    wait_for(lambda: agent(m, agent_id) is None, timeout=timeout, what=f"agent {agent_id} gone")


def make_certs(d):
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate "agent-1",
    made with the openssl command in directory d. Returns a dict of paths."""
    k = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *k, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=test-ca")
    for name, cn, ext in (("server", "localhost",
                           "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                          ("client", "agent-1", "extendedKeyUsage=clientAuth")):
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        run("req", *k, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {n: os.path.join(d, n) for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                            "client.key")}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def grpc_frame(payload, compressed=0, length=None):
    """A Length-Prefixed-Message; length overrides the announced length."""
    n = len(payload) if length is None else length
    return bytes([compressed]) + n.to_bytes(4, "big") + payload


def nghttp(url, body=None, headers=None, tmpdir=None, timeout=10):
    """Runs `nghttp -v` (HTTP/2 with prior knowledge) with a POST body; returns the response
    headers and trailers it printed as a list of (name, value) and the whole output."""
    args = ["nghttp", "-v", "-n", "-t", str(timeout)]
    hdrs = {":method": "POST", "content-type": "application/grpc", "te": "trailers"}
    hdrs.update(headers or {})
    for k, v in hdrs.items():
        if v is not None:
            args += ["-H", f"{k}: {v}"]
    if body is not None:
        path = os.path.join(tmpdir, f"body-{time.monotonic_ns()}")
        with open(path, "wb") as f:
            f.write(body)
        args += ["-d", path]
    args.append(url)
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 5)
    out = p.stdout + p.stderr
    recv = re.findall(r"recv \(stream_id=\d+\) ([^:\s][^:]*|:[a-z]+): (.*)", out)
    return [(k.strip(), v.strip()) for k, v in recv], out
