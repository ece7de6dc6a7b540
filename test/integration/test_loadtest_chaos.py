"""sirius-loadtest chaos scenarios, short form (a few seconds each): the harness's fault-injecting
proxy between its agents and the manager (blackhole, reset, delay), a redis restart behind a
proxy, a manager kill -9 restarted by restart_cmd, and CPU pressure. Each run must pass the
no-loss check (every accepted command final, none twice) and report sane per-fault figures.
The long form is bench/chaos/run.sh."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import BUILD, MANAGER_BIN, free_port, wait_for
from pipeline_fixtures import redis  # noqa: F401  (fixture)

LOADTEST_BIN = os.path.join(BUILD, "src", "sirius-loadtest")


def run_chaos(tmp_path, server, manager_api, faults, proxies=(), extra=(), timeout=60,
              fmt="json", duration=2):
    out = tmp_path / f"report-{time.monotonic_ns()}.{fmt}"
    args = [LOADTEST_BIN, "--agents", "5", "--commands", "0", "--commands-per-agent", "0",
            "--duration", str(duration), "--rate", "40", "--types", "echo",
            "--scan-duration-ms", "10", "--batch", "10", "--heartbeat-interval", "0.5",
            "--command-timeout", "5", "--drain-timeout", "20", "--report-interval", "0",
            "--server", server, "--manager-api", manager_api, "--timeout", "50",
            "--format", fmt, "--output", str(out)]
    for p in proxies:
        args += ["--proxy", p]
    for f in faults:
        args += ["--fault", f]
    args += list(extra)
    t0 = time.monotonic()
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - t0
    text = out.read_text() if out.exists() else ""
    return p.returncode, (json.loads(text) if fmt == "json" and text else text), p.stderr, took


def check_fault(rep, i, action, target, at, duration):
    """The per-fault fields are present and sane."""
    f = rep["faults"][i]
    assert f["action"] == action and f["target"] == target, f
    assert f["error"] is None, f
    assert abs(f["start_s"] - at) < 0.5, f
    assert abs(f["end_s"] - f["start_s"] - duration) < 0.5, f
    for k in ("submitted", "completed", "failed", "retried", "errors"):
        assert isinstance(f[k], (int, float)) and f[k] >= 0, (k, f)
    assert f["submitted"] > 0, f  # submission went on during the fault
    assert f["max_latency_ms"] >= 0
    assert f["time_to_detect_s"] is None or 0 <= f["time_to_detect_s"] <= duration + 1, f
    assert f["time_to_recover_s"] is None or 0 <= f["time_to_recover_s"] < 20, f
    return f


def check_no_loss(rc, rep, stderr):
    assert rc == 0, stderr
    assert rep["fatal"] is None, rep["fatal"]
    nl = rep["no_loss"]
    assert nl["pass"] and nl["not_final"] == 0 and nl["final_twice"] == 0, nl
    assert nl["accepted"] == rep["total"] > 0 and nl["final"] == nl["accepted"], nl


def agents_proxy():
    return f"agents=127.0.0.1:{free_port()}->"


def test_blackhole_between_agents_and_manager(manager, tmp_path):
    rc, rep, err, took = run_chaos(
        tmp_path, "proxy:agents", manager.admin_url,
        ["at=1 duration=2 target=agents action=blackhole"],
        proxies=[agents_proxy() + manager.grpc_addr])
    check_no_loss(rc, rep, err)
    f = check_fault(rep, 0, "blackhole", "agents", 1, 2)
    # nothing completes through a partition: the stall is seen as a latency spike, and
    # fresh commands complete once it is over
    assert f["time_to_detect_s"] is not None, f
    assert f["time_to_recover_s"] is not None, f
    assert f["max_latency_ms"] > rep["spike_threshold_ms"], f
    assert took < 30


def test_reset_between_agents_and_manager(manager, tmp_path):
    rc, rep, err, _ = run_chaos(
        tmp_path, "proxy:agents", manager.admin_url,
        ["at=1 duration=1 target=agents action=reset"],
        proxies=[agents_proxy() + manager.grpc_addr])
    check_no_loss(rc, rep, err)
    f = check_fault(rep, 0, "reset", "agents", 1, 1)
    assert f["time_to_detect_s"] is not None and f["time_to_recover_s"] is not None, f
    assert rep["errors"].get("agent_disconnects", 0) >= 1, rep["errors"]


def test_delay_between_agents_and_manager_and_html(manager, tmp_path):
    proxy = agents_proxy() + manager.grpc_addr
    rc, rep, err, _ = run_chaos(
        tmp_path, "proxy:agents", manager.admin_url,
        ["at=1 duration=2 target=agents action=delay delay_ms=400"], proxies=[proxy])
    check_no_loss(rc, rep, err)
    f = check_fault(rep, 0, "delay", "agents", 1, 2)
    assert f["max_latency_ms"] >= 400, f
    assert f["time_to_detect_s"] is not None, f
    assert rep["timeline"]["rows"] and rep["timeline"]["step_s"] > 0
    # the same scenario as one self-contained HTML page: a chart with the fault shaded
    rc, page, err, _ = run_chaos(
        tmp_path, "proxy:agents", manager.admin_url,
        ["at=0.5 duration=1 target=agents action=delay delay_ms=100"],
        proxies=[agents_proxy() + manager.grpc_addr], fmt="html", duration=1)
    assert rc == 0, err
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<svg" in page and 'class="fault"' in page and 'class="series"' in page
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert 'id="no-loss" class="pass"' in page


def test_redis_restart_through_a_proxy(manager_factory, redis, tmp_path):  # noqa: F811
    pport = free_port()
    m = manager_factory(env={"VALKEY_HOST": "127.0.0.1", "VALKEY_PORT": str(pport)}, start=False)
    # the harness runs the proxy, so the manager starts once the harness listens
    restart = (f"exec redis-server --port {redis.port} --bind 127.0.0.1 --dir {redis.dir} "
               f"--appendonly yes --appendfsync always --save '' --daemonize no "
               f"--logfile {redis.log_path} --protected-mode no")
    fault = (f"at=2 duration=1 target=redis action=kill9 pid={redis.proc.pid} "
             f"restart_cmd=\"{restart}\"")
    out = tmp_path / "redis-report.json"
    lt = subprocess.Popen(
        [LOADTEST_BIN, "--agents", "5", "--commands", "0", "--commands-per-agent", "0",
         "--duration", "2", "--rate", "40", "--types", "echo", "--scan-duration-ms", "10",
         "--batch", "10", "--heartbeat-interval", "0.5", "--command-timeout", "10",
         "--drain-timeout", "25", "--report-interval", "0",
         "--server", m.grpc_addr, "--manager-api", m.admin_url, "--timeout", "60",
         "--proxy", f"redis=127.0.0.1:{pport}->127.0.0.1:{redis.port}",
         "--fault", fault, "--format", "json", "--output", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    restarted = None
    try:
        m.start()  # connects to redis through the harness's proxy
        _, err = lt.communicate(timeout=75)
        rep = json.loads(out.read_text())
        restarted = rep["faults"][0]["restart_pid"]
        check_no_loss(lt.returncode, rep, err)
        f = check_fault(rep, 0, "kill9", "redis", 2, 1)
        assert f["pid"] == redis.proc.pid and f["restart_pid"] > 0, f
        assert f["time_to_detect_s"] is not None, f
        assert f["time_to_recover_s"] is not None, f
    finally:
        if lt.poll() is None:
            lt.kill()
        if restarted:
            try:
                os.kill(restarted, signal.SIGTERM)
            except ProcessLookupError:
                pass


def test_manager_kill9_and_restart_cmd(manager_factory, redis, tmp_path):  # noqa: F811
    m = manager_factory(env={"VALKEY_HOST": "127.0.0.1", "VALKEY_PORT": str(redis.port)})
    wait_for(lambda: m.get("/ready")[0] == 200, what="ready")
    script = tmp_path / "restart-manager.sh"
    exports = "".join(f"export {k}='{v}'\n" for k, v in m.env.items()
                      if k.isidentifier() and "'" not in v)
    script.write_text(f"{exports}exec {MANAGER_BIN} >>{m.log_path}.restart 2>&1\n")
    restarted = None
    try:
        rc, rep, err, _ = run_chaos(
            tmp_path, m.grpc_addr, m.admin_url,
            [f"at=1 duration=1 target=manager action=kill9 pid={m.proc.pid} "
             f"restart_cmd='sh {script}'"], timeout=75)
        restarted = rep["faults"][0]["restart_pid"] if isinstance(rep, dict) else None
        check_no_loss(rc, rep, err)
        f = check_fault(rep, 0, "kill9", "manager", 1, 1)
        assert f["restart_pid"] > 0
        assert f["time_to_detect_s"] is not None and f["retried"] + f["errors"] > 0, f
        assert f["max_latency_ms"] > 0, f  # from the first attempt: the retries count
        assert f["time_to_recover_s"] is not None, f
        assert m.proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        if restarted:
            try:
                os.kill(restarted, signal.SIGTERM)
            except ProcessLookupError:
                pass


def test_cpu_pressure_is_bounded(manager, tmp_path):
    rc, rep, err, took = run_chaos(
        tmp_path, manager.grpc_addr, manager.admin_url,
        ["at=0.5 duration=1.5 target=manager action=cpu_pressure threads=2"])
    check_no_loss(rc, rep, err)
    f = check_fault(rep, 0, "cpu_pressure", "manager", 0.5, 1.5)
    assert f["pid"] > 0
    # the hog stopped with its fault: no such process any more
    with pytest.raises(ProcessLookupError):
        os.kill(f["pid"], 0)


def test_chaos_surface_and_unreachable_manager(tmp_path):
    for fault, why in (("at=1 target=x action=blackhole", "--fault"),
                       ("at=1 duration=1 target=x action=explode", "action"),
                       ("at=1 duration=1 target=nope action=drop", "--proxy"),
                       ("at=1 target=manager action=kill9", "pid")):
        p = subprocess.run([LOADTEST_BIN, "--fault", fault], capture_output=True, text=True,
                           timeout=5)
        assert p.returncode == 2 and why in p.stderr, (fault, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run([LOADTEST_BIN, "--proxy", "a=1.2.3.4->x"], capture_output=True,
                       text=True, timeout=5)
    assert p.returncode == 2 and "--proxy" in p.stderr
    # issue 17: an unreachable manager ends the run with exit 3 instead of hanging
    t0 = time.monotonic()
    p = subprocess.run([LOADTEST_BIN, "--agents", "2", "--commands", "10",
                        "--server", "127.0.0.1:1", "--manager-api", "http://127.0.0.1:1",
                        "--drain-timeout", "1", "--connect-timeout", "1"],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 3 and "cannot reach the manager" in p.stderr, p.stderr
    assert time.monotonic() - t0 < 10


def test_overall_deadline_ends_the_run(manager):
    """--timeout stops a run that would go on (issue 17): it reports and exits 3."""
    t0 = time.monotonic()
    p = subprocess.run([LOADTEST_BIN, "--agents", "2", "--commands", "0", "--commands-per-agent",
                        "0", "--duration", "60", "--rate", "10", "--server", manager.grpc_addr,
                        "--manager-api", manager.admin_url, "--report-interval", "0",
                        "--timeout", "2", "--format", "json"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 3 and "deadline" in p.stderr, p.stderr
    rep = json.loads(p.stdout)
    assert "deadline" in rep["fatal"] and rep["total"] > 0
    assert rep["no_loss"]["pass"], rep["no_loss"]  # the drain still saw every result
    assert time.monotonic() - t0 < 10
