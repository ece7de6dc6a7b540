"""sirius-agent against a real gRPC server written with Python's grpcio (not our code): the
server plays the manager's side of scan.AgentService/Connect and checks what the agent sends."""
import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from concurrent import futures

import grpc
import pytest

from conftest import AGENT_BIN, free_port, wait_for

FINAL = {"completed", "failed", "cancelled", "rejected"}


class Stream:
    """One Connect call as the server sees it."""

    def __init__(self, headers, peer=""):
        self.headers = headers
        self.peer = peer  # e.g. "ipv4:127.0.0.2:40312"
        self.msgs = []
        self.out = queue.Queue()
        self.closed = False

    @property
    def agent_id(self):
        return self.headers.get("agent-id") or (self.msgs[0].agent_id if self.msgs else None)

    def heartbeats(self):
        return [m for m in self.msgs if m.WhichOneof("payload") == "heartbeat"]

    def results(self, cid=None):
        return [m.command_result for m in self.msgs if m.WhichOneof("payload") == "command_result"
                and (cid is None or m.command_result.command_id == cid)]

    def end(self):
        self.out.put(None)


class FakeManager:
    def __init__(self, pb, port=None, creds=None):
        self.pb = pb
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.streams = []
        self.lock = threading.Lock()
        self.creds = creds
        self.server = None
        self.seq = 0

    def start(self):
        pb = self.pb
        mgr = self

        class Servicer(pb.agent_pb2_grpc.AgentServiceServicer):
            def Ping(self, request, context):
                return pb.agent_pb2.PingResponse(message="pong", timestamp=int(time.time()))

            def Connect(self, request_iterator, context):
                st = Stream(dict(context.invocation_metadata()), context.peer())
                with mgr.lock:
                    mgr.streams.append(st)

                def reader():
                    try:
                        for m in request_iterator:
                            with mgr.lock:
                                st.msgs.append(m)
                    except Exception:  # noqa: BLE001 - the stream ended
                        pass
                    finally:
                        st.closed = True
                        st.out.put(None)
                threading.Thread(target=reader, daemon=True).start()
                while True:
                    cmd = st.out.get()
                    if cmd is None:
                        break
                    yield cmd
                st.closed = True

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=200),
                                  options=[("grpc.so_reuseport", 0)])
        pb.agent_pb2_grpc.add_AgentServiceServicer_to_server(Servicer(), self.server)
        if self.creds:
            self.server.add_secure_port(self.addr, self.creds)
        else:
            self.server.add_insecure_port(self.addr)
        self.server.start()
        return self

    def stop(self):
        for st in list(self.streams):
            st.end()
        self.server.stop(0).wait()

    def open_streams(self, agent_id=None):
        with self.lock:
            return [s for s in self.streams if not s.closed and s.msgs
                    and (agent_id is None or s.agent_id == agent_id)]

    def stream(self, agent_id, timeout=10):
        return wait_for(lambda: (self.open_streams(agent_id) or [None])[-1], timeout=timeout,
                        what=f"stream of {agent_id}")

    def send(self, st, type_, params=None, timeout_seconds=0, cid=None):
        self.seq += 1
        cid = cid or f"cmd-{self.seq}"
        st.out.put(self.pb.agent_pb2.CommandMessage(
            id=cid, type=type_, params=params or {}, timeout_seconds=timeout_seconds))
        return cid

    def final(self, st, cid, timeout=10):
        def get():
            with self.lock:
                r = [x for x in st.results(cid) if x.status in FINAL]
            return r[0] if r else None
        return wait_for(get, timeout=timeout, what=f"final result of {cid}")


class AgentProc:
    def __init__(self, tmp_path, server, args=(), env=None):
        self.log_path = os.path.join(str(tmp_path), f"agent-{time.monotonic_ns()}.log")
        e = dict(os.environ)
        e.update({"SIRIUS_LOG_LEVEL": "debug"})
        e.update(env or {})
        cmd = [AGENT_BIN] + (["--server", server] if server else []) + list(args)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=e, stdout=self.log, stderr=self.log)

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def fake(pb):
    m = FakeManager(pb).start()
    yield m
    with contextlib.suppress(Exception):
        m.stop()


@pytest.fixture
def agents(tmp_path):
    started = []

    def make(server, *args, env=None):
        a = AgentProc(tmp_path, server, args, env)
        started.append(a)
        return a
    yield make
    for a in started:
        with contextlib.suppress(Exception):
            a.stop(signal.SIGKILL)


def data(result):
    return dict(result.data)
