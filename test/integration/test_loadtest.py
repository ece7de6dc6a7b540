"""sirius-loadtest: a short REST scenario against a real manager; the report's counts add up and
match the manager's own counters (GET /api/status, GET /api/metrics)."""
import json
import os
import subprocess

from conftest import BUILD, http

LOADTEST_BIN = os.path.join(BUILD, "src", "sirius-loadtest")


def run_lt(args, timeout=20):
    p = subprocess.run([LOADTEST_BIN] + args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def status_counts(manager):
    st, _, body = manager.get("/api/status")
    assert st == 200, body
    return body["commands"]


def metrics_counts(manager):
    """Sums of the executed (by status) and received counters of GET /api/metrics."""
    st, _, body = manager.get("/api/metrics")
    assert st == 200, body
    m = body["metrics"]
    by = {}
    for s in m["agent_commands_executed_total"]["series"]:
        by[s["labels"]["status"]] = by.get(s["labels"]["status"], 0) + s["value"]
    received = sum(s["value"] for s in m["agent_commands_received_total"]["series"])
    return by, received


def test_rest_scenario_report_adds_up(manager, tmp_path):
    out = tmp_path / "report.json"
    before = status_counts(manager)
    mbefore, rbefore = metrics_counts(manager)
    rc, stdout, stderr = run_lt([
        "--agents", "20", "--commands", "200", "--types", "echo:70,sleep:20,scan:10",
        "--server", manager.grpc_addr, "--manager-api", manager.admin_url,
        "--batch", "50", "--sleep-seconds", "0.02", "--scan-duration-ms", "20",
        "--report-interval", "0.2", "--format", "json", "--output", str(out)])
    assert rc == 0, stderr
    rep = json.loads(out.read_text())
    assert rep["total"] == 200
    assert rep["successful"] + rep["failed"] == rep["total"]
    assert rep["not_final"] == 0 and rep["all_final"] and rep["not_final_ids"] == []
    assert rep["successful"] == 200
    assert sum(rep["by_status"].values()) == 200
    lat = rep["latency_ms"]
    assert lat["count"] == 200
    assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert rep["throughput"] > 0
    assert rep["agents"]["fleet"] == 20 and rep["agents"]["connected"] == 20
    # the manager's own view, as read by the harness and by us
    after = status_counts(manager)
    m = rep["manager"]
    assert m["commands_received"] == after["received"] - before["received"] == 200
    assert m["commands_completed"] == after["completed"] - before["completed"] == 200
    assert m["commands_failed"] == 0
    mafter, rafter = metrics_counts(manager)
    assert rafter - rbefore == rep["total"]
    for status, n in rep["by_status"].items():
        assert mafter.get(status, 0) - mbefore.get(status, 0) == n, (status, mafter, mbefore)
    # The mix is honoured exactly (smooth weighted round robin): 140 echo, 40 sleep, 20 scan.
    st, _, body = manager.get("/api/metrics")
    per_type = {s["labels"]["type"]: s["value"]
                for s in body["metrics"]["agent_commands_received_total"]["series"]}
    assert per_type == {"echo": 140, "sleep": 40, "scan": 20}, per_type


def test_failures_are_reported_and_every_command_final(manager):
    rc, stdout, stderr = run_lt([
        "--agents", "10", "--commands", "200", "--types", "echo",
        "--server", manager.grpc_addr, "--manager-api", manager.admin_url,
        "--fail-rate", "0.3", "--crash-rate", "0.2", "--seed", "7",
        "--report-interval", "0", "--format", "json"])
    assert rc == 0, stderr
    rep = json.loads(stdout)
    assert rep["total"] == 200 and rep["not_final"] == 0
    assert rep["successful"] + rep["failed"] == 200
    assert rep["failed"] == rep["by_status"].get("failed", 0) > 0
    assert rep["agents"]["crashed"] == 2
    m = rep["manager"]
    assert m["commands_failed"] == rep["failed"]
    assert m["commands_completed"] == rep["successful"]
    assert m["commands_retries"] >= 1  # the crashed agents' commands went elsewhere
    assert m["commands_dispatched"] == 200 + m["commands_retries"]


def test_text_and_csv_formats(manager):
    base = ["--agents", "3", "--commands", "12", "--server", manager.grpc_addr,
            "--manager-api", manager.admin_url, "--report-interval", "0"]
    rc, stdout, _ = run_lt(base)
    assert rc == 0 and "total=12 successful=12 (100.00%)" in stdout and "p99=" in stdout
    rc, stdout, _ = run_lt(base + ["--format", "csv"])
    head, row = stdout.strip().splitlines()
    rec = dict(zip(head.split(","), row.split(",")))
    assert rec["total"] == "12" and rec["successful"] == "12" and rec["not_final"] == "0"


def test_program_surface(tmp_path):
    rc, out, _ = run_lt(["--help"])
    assert rc == 0 and "--commands-per-agent" in out and "--crash-rate" in out
    rc, out, _ = run_lt(["--version"])
    assert rc == 0 and out.startswith("sirius-loadtest ")
    for args, flag in ((["--agents", "x"], "--agents"), (["--types", "echo:0"], "--types"),
                       (["--submit", "smtp"], "--submit"), (["--format", "xml"], "--format"),
                       (["--fail-rate", "2"], "--fail-rate"), (["--bogus", "1"], "--bogus"),
                       (["--manager-api", "ftp://x"], "--manager-api")):
        rc, out, err = run_lt(args)
        assert rc == 2 and flag in err and len(err.strip().splitlines()) == 1, (args, err)
    cfg = tmp_path / "lt.conf"
    cfg.write_text("# scenario\nagents = 0\n")
    rc, _, err = run_lt(["--config", str(cfg)])
    assert rc == 2 and "--agents" in err
    cfg.write_text("agents=2\nnope=1\n")
    rc, _, err = run_lt(["--config", str(cfg)])
    assert rc == 2 and "--config" in err and "lt.conf:2:" in err
    env = dict(os.environ, LOADTEST_BATCH="5000")
    p = subprocess.run([LOADTEST_BIN], capture_output=True, text=True, env=env, timeout=5)
    assert p.returncode == 2 and "LOADTEST_BATCH" in p.stderr


def test_hello_and_mixed_fleets(manager, tmp_path):
    """--protocol hello: the in-process agents speak hello.HelloService and run exec/status
    commands; --protocol mixed: half of them do, side by side with scan agents on one manager,
    and every command completes."""
    # mixed: `status`, which both kinds run (placement does not know which types an agent runs)
    for proto, agents, types in (("hello", 6, "exec:3,status:1"), ("mixed", 8, "status")):
        out = tmp_path / f"{proto}.json"
        rc, stdout, stderr = run_lt([
            "--agents", str(agents), "--commands", "120", "--types", types,
            "--protocol", proto, "--id-prefix", f"lt-{proto}-",
            "--server", manager.grpc_addr, "--manager-api", manager.admin_url,
            "--batch", "40", "--scan-duration-ms", "10", "--format", "json",
            "--output", str(out)], timeout=60)
        assert rc == 0, stderr
        rep = json.loads(out.read_text())
        assert rep["total"] == 120 and rep["successful"] == 120 and rep["all_final"], rep
        # the agents are gone with the run; their commands say who ran them and how: a hello
        # agent's result carries exit_code and execution_time
        st, _, body = manager.get(f"/api/commands?type={types.split(':')[0]}&limit=1000")
        assert st == 200, body
        ran = {}
        for c in body["commands"]:
            aid = c.get("agent_id") or ""
            if aid.startswith(f"lt-{proto}-") and c["status"] == "completed":
                hello = "execution_time" in ((c["result"] or {}).get("data") or {})
                ran[hello] = ran.get(hello, 0) + 1
        if proto == "hello":
            assert set(ran) == {True}, ran
        else:
            assert set(ran) == {True, False}, ran
    rc, _, stderr = run_lt(["--protocol", "nope", "--server", manager.grpc_addr])
    assert rc == 2 and "--protocol" in stderr, stderr
