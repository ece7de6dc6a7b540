"""No loss (docs/api.md "Commands"): with thousands of commands in flight through AMQP, a
`kill -9` of sirius-manager, a restart of redis-server, and a restart of rabbitmq-server each
delay results but never lose one: every published id reaches a final status in the store and
its final record arrives on AMQP_RESULT_QUEUE (duplicates allowed, same id). 20 simulated agents
(sirius-agent --count 20) run short sleeps and scans."""
import contextlib
import random
import signal
import time

import pytest

from conftest import wait_for
from pipeline_fixtures import (FINAL, Collector, amqp_channel, broker,  # noqa: F401
                               command_ids_listed, declare, kill9, rest_commands_available,
                               pipeline_env, publish, redis, same_ports_manager,
                               start_manager, store_statuses)

pika = pytest.importorskip("pika")

AGENTS = 20


@pytest.fixture
def started():
    ms = []
    yield ms
    for m in ms:
        with contextlib.suppress(Exception):
            m.stop()


@pytest.fixture
def run(broker, redis, tmp_path, started, agent_factory):  # noqa: F811
    """Starts manager + 20 agents on fresh queues; returns a namespace for the test."""
    class Run:
        pass
    r = Run()

    def start(name):
        r.cmd_q, r.res_q = broker.queues(name)
        r.port = broker.port
        declare(broker.port, r.cmd_q, r.res_q)
        # AGENT_TIMEOUT 5: agents that held commands at a restart get 5 s to reconnect and
        # report before those commands are re-queued.
        r.env = pipeline_env(broker, redis, r.cmd_q, r.res_q, AGENT_TIMEOUT="5",
                             SIRIUS_LOG_LEVEL="info", MAX_AGENT_LOAD="1")
        r.m = start_manager(str(tmp_path), r.env, started)
        r.agents = agent_factory(r.m.grpc_addr, args=[
            "--count", str(AGENTS), "--id-prefix", "nl-", "--max-concurrent", "4",
            "--heartbeat-interval", "1", "--scan-duration-ms", "100",
            "--scan-duration-dist", "uniform", "--reconnect-max-ms", "500", "--seed", "7"])
        wait_for(lambda: len(r.m.agent_ids()) == AGENTS, timeout=20, what="20 agents")
        r.res = Collector(broker.port, r.res_q)
        return r
    r.start = start
    yield r
    if hasattr(r, "res"):
        r.res.close()


def commands(prefix, n, seed=1, sleep=(0.05, 0.3)):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        cid = f"{prefix}-{i:05d}"
        if i % 4 == 3:
            out.append({"id": cid, "type": "scan", "params": {"target": f"10.0.{i // 256}.{i % 256}"}})
        else:
            out.append({"id": cid, "type": "sleep",
                        "params": {"seconds": f"{rnd.uniform(*sleep):.3f}"}})
    return out


def final_count(res, ids):
    return sum(1 for i in ids if res.final(i))


def diagnose(r, redis_, ids):
    """What the store and the broker say about the commands still missing a result."""
    missing = [i for i in ids if not r.res.final(i)]
    st = store_statuses(redis_, missing)
    counts = {}
    for s in st.values():
        counts[s] = counts.get(s, 0) + 1
    depth = None
    with contextlib.suppress(Exception):
        conn, ch = amqp_channel(r.port, confirm=False)
        depth = ch.queue_declare(r.cmd_q, durable=True, passive=True).method.message_count
        conn.close()
    return (f"{len(missing)} missing, store statuses {counts}, command queue depth {depth}, "
            f"outbox {redis_.cmd('HLEN', 'sm:outbox')}, e.g. {missing[:3]}")


def check_all_final(r, redis_, ids, timeout, m=None):  # noqa: F811
    m = m or r.m
    try:
        finals = r.res.wait_final(ids, timeout=timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnose(r, redis_, ids)}") from None
    assert all(d["status"] in FINAL for d in finals.values())
    # duplicates are allowed, but every copy carries the same id and a final status
    for i in ids:
        for d in r.res.by_id[i]:
            assert d["id"] == i and d["status"] in FINAL, d
    st = store_statuses(redis_, ids)
    not_final = {i: s for i, s in st.items() if s not in FINAL}
    assert not not_final, f"{len(not_final)} not final in the store, e.g. {list(not_final.items())[:5]}"
    assert redis_.cmd("ZCARD", "sm:cmds:active") == 0
    # the outbox drains once everything is confirmed
    wait_for(lambda: redis_.cmd("HLEN", "sm:outbox") == 0, timeout=20, what="outbox empty")
    # the REST API agrees (when this build serves it), checked on a sample
    if rest_commands_available(m):
        sample = ids[::max(1, len(ids) // 200)]
        api = command_ids_listed(m, sample)
        assert all(api[i] == finals[i]["status"] or api[i] in FINAL for i in sample), \
            {i: s for i, s in api.items() if s not in FINAL}
    return finals


def test_no_loss_manager_kill9(run, broker, redis, tmp_path, started):  # noqa: F811
    r = run.start("kill9")
    # ~12 s of work for the 80 agent slots: the 300 results come after ~1 s.
    cmds = commands("k", 3000, sleep=(0.1, 0.6))
    ids = [c["id"] for c in cmds]
    publish(broker.port, r.cmd_q, cmds)
    # Kill while a good part is still in flight. The agents are stopped (SIGSTOP) first, so that
    # what is in flight at the kill does not depend on how fast this process sees results: with
    # the agents frozen nothing can finish, and the store's active set is what the kill hits.
    r.res.wait(lambda s: final_count(s, ids) >= 300, timeout=60, what="300 results before kill")
    agents = r.agents.proc
    agents.send_signal(signal.SIGSTOP)
    try:
        active = redis.cmd("ZCARD", "sm:cmds:active")
        assert active > 0, "everything finished before the kill: make the work longer"
        kill9(r.m)
        m2 = same_ports_manager(r.m, str(tmp_path), started)
        m2.start()
    finally:
        agents.send_signal(signal.SIGCONT)
    wait_for(lambda: m2.get("/ready", timeout=1)[0] == 200, timeout=20, what="restarted /ready")
    finals = check_all_final(r, redis, ids, timeout=60, m=m2)
    assert sum(1 for d in finals.values() if d["status"] == "completed") >= len(ids) * 0.95, \
        {s: sum(1 for d in finals.values() if d["status"] == s) for s in FINAL}


def test_no_loss_redis_restart(run, broker, redis, tmp_path):  # noqa: F811
    r = run.start("redis")
    cmds = commands("r", 1500, seed=2)
    ids = [c["id"] for c in cmds]
    publish(broker.port, r.cmd_q, cmds)
    r.res.wait(lambda s: final_count(s, ids) >= 200, timeout=60, what="200 results")
    redis.kill()
    # The manager notices: /ready turns 503, the agents stay connected.
    st, _, body = wait_for(lambda: (lambda x: x if x[0] == 503 else None)(
        r.m.get("/ready", timeout=2)), timeout=15, what="/ready 503 during the redis outage")
    assert "store" in str(body), body
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        r.res.poll(0.2)
        assert len(r.m.agent_ids()) == AGENTS, "agents must stay connected during the outage"
        assert r.m.get("/ready", timeout=2)[0] == 503
    assert r.m.proc.poll() is None
    redis.start()  # same port, same data (appendfsync always)
    wait_for(lambda: r.m.get("/ready", timeout=1)[0] == 200, timeout=30,
             what="/ready 200 after redis is back")
    check_all_final(r, redis, ids, timeout=120)
    assert len(r.m.agent_ids()) == AGENTS


def test_no_loss_rabbitmq_restart(run, broker, redis, tmp_path):  # noqa: F811
    r = run.start("rabbit")
    cmds = commands("q", 1500, seed=3)
    ids = [c["id"] for c in cmds]
    publish(broker.port, r.cmd_q, cmds)
    r.res.wait(lambda s: final_count(s, ids) >= 200, timeout=60, what="200 results")
    broker.kill()
    wait_for(lambda: r.m.get("/ready", timeout=2)[0] == 503, timeout=15,
             what="/ready 503 during the broker outage")
    assert len(r.m.agent_ids()) == AGENTS
    broker.restart()
    wait_for(lambda: r.m.get("/ready", timeout=1)[0] == 200, timeout=60,
             what="/ready 200 after the broker is back")
    # Results finished during the outage wait in the outbox and are published now.
    check_all_final(r, redis, ids, timeout=120)


def test_no_loss_rest_kill9_mid_batch(run, broker, redis, tmp_path, started):  # noqa: F811
    """kill -9 while REST arrays are being stored (group commit: every moment of a steady
    submission stream has a batch at Valkey): every command the manager acknowledged (202)
    reaches a final status after the restart; unacknowledged ones may or may not exist."""
    import threading
    from conftest import http
    r = run.start("kill9rest")
    acked, stop = [], threading.Event()
    lock = threading.Lock()

    def submitter(tag):
        n = 0
        while not stop.is_set():
            body = [{"id": f"kr-{tag}-{n + i:06d}", "type": "sleep", "params": {"seconds": "0.05"}}
                    for i in range(100)]
            n += 100
            try:
                st, _, ans = http("POST", r.m.admin_url + "/api/commands", body=body, timeout=5)
            except OSError:
                continue  # the manager is gone: nothing of this array was acknowledged
            if st == 202:
                with lock:
                    acked.extend(a["id"] for a in ans)
            elif isinstance(ans, dict) and isinstance(ans.get("results"), list):
                with lock:
                    acked.extend(a["id"] for a in ans["results"] if "id" in a)

    threads = [threading.Thread(target=submitter, args=(t,), daemon=True) for t in "ab"]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 2000, timeout=30, what="2000 acknowledged")
    kill9(r.m)  # mid-stream: arrays are being answered and written at this moment
    stop.set()
    for t in threads:
        t.join(timeout=10)
    with lock:
        ids = list(dict.fromkeys(acked))
    m2 = same_ports_manager(r.m, str(tmp_path), started)
    m2.start()
    wait_for(lambda: m2.get("/ready", timeout=1)[0] == 200, timeout=20, what="restarted /ready")

    def unfinished():
        st = store_statuses(redis, ids)
        return [i for i in ids if st.get(i) not in FINAL]
    left = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        left = unfinished()
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"{len(left)} of {len(ids)} acknowledged commands not final, e.g. {left[:5]}"
    finals = r.res.wait_final(ids, timeout=60)  # and each result was published
    assert all(d["status"] in FINAL for d in finals.values())
