"""Metrics as Prometheus users expect (gasguard/metrics.py conventions) and the alert rules on them
(monitoring/prometheus/): process and build-info metrics, label sets at zero before the first event, no
`_created` series, per-port state, incident gauges; the rules checked and unit-tested by Debian's promtool."""

import ast
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import gasguard
from gasguard.gateway import ingest, metrics as gwmetrics, verify
from gasguard.grading.incidents import IncidentEngine
from gasguard.protocol.errors import REASONS
from gasguard.testing.mosquitto import free_port
from gasguard.testing.rig import Rig
from gasguard.testing.waits import wait_until
from grading_helpers import T0, alarm, device

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "prometheus"


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run installs it)")
    return exe


def test_alert_rules_check_and_pass_their_unit_tests():
    r = subprocess.run([_promtool(), "check", "rules", str(RULES / "gasguard-rules.yml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([_promtool(), "test", "rules", "gasguard-rules.test.yml"], cwd=RULES, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def _unknown_metrics(exprs) -> set[str]:
    """The gasguard_* / process_* names in PromQL `exprs` that neither the gateway nor the command service
    exports (a misspelt name is no error to promtool: its series are just never there)."""
    from gasguard.command.metrics import Metrics as CommandMetrics
    known = _exported_names(gwmetrics.Metrics().registry) | _exported_names(CommandMetrics().registry)
    return {n for e in exprs for n in re.findall(r"\b((?:gasguard|process)_[a-z_]+)", e)} - known


def test_alert_rules_name_only_metrics_the_services_export():
    exprs = re.findall(r"^\s*expr: (.+)$", (RULES / "gasguard-rules.yml").read_text(), re.M)
    assert len(exprs) >= 12 and _unknown_metrics(exprs) == set()


def test_every_alert_has_a_unit_test_where_it_fires():
    alerts = set(re.findall(r"^\s*- alert: (\w+)", (RULES / "gasguard-rules.yml").read_text(), re.M))
    cases = (RULES / "gasguard-rules.test.yml").read_text().split("- eval_time:")[1:]
    fired = {re.search(r"alertname: (\w+)", c).group(1) for c in cases if "exp_labels" in c}
    assert len(alerts) >= 9 and alerts == fired, f"alerts with no firing test: {sorted(alerts - fired)}"


def _string_args(path: Path, func: str) -> set[str]:
    """First string arguments of calls to `func` in a source file (the reasons the code can count)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == func \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            out.add(node.args[0].value)
    return out


def test_every_rejection_reason_in_the_code_is_initialised():
    in_code = _string_args(Path(verify.__file__), "Rejected") | _string_args(Path(ingest.__file__), "reject")
    assert in_code and in_code <= set(gwmetrics.REJECT_REASONS), in_code - set(gwmetrics.REJECT_REASONS)
    spec = (ROOT / "protocol" / "SPEC.md").read_text()
    assert all(f"`{r}`" in spec.split("## 8. Errors")[1].split("## 9")[0] for r in REASONS)


def test_incident_gauges_count_open_and_overdue_by_deadline():
    eng = IncidentEngine({"district": "lixia"})
    out = eng.observe(alarm(device(0xA001, households=12_000), T0, 4, value=900, ptrip=True))
    iid = out[0][1]["incident_id"]
    assert eng.gauges(T0 + 60) == {"incidents_open": {"supply": 1, "pressure": 0, "leak": 0},
                                   "incidents_overdue": {"phone": 0, "written": 0}}
    assert eng.gauges(T0 + 20 * 60)["incidents_overdue"] == {"phone": 1, "written": 0}     # plan 4.1.2: 20 min
    assert eng.gauges(T0 + 45 * 60)["incidents_overdue"] == {"phone": 0, "written": 1}     # 45 min
    eng.acknowledge(iid, {"by": "duty"}, T0 + 46 * 60)
    assert eng.gauges(T0 + 50 * 60)["incidents_overdue"] == {"phone": 0, "written": 0}


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_the_endpoint_has_process_build_zeroed_labels_ports_and_incidents_and_no_created(tmp_path, mosquitto):
    bind = f"127.0.0.1:{free_port()}"
    rig = Rig(tmp_path, mosquitto.port, sub=False, metrics=f'tick_interval = 0.1\nbind = "{bind}"\n',
              extra="[plugins]\ngrading = true\n")

    def scrape() -> dict:
        text = urllib.request.urlopen(f"http://{bind}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    try:
        rig.start()
        m = scrape()
        names = {n for n, _ in m}
        assert not [n for n in names if n.endswith("_created")]
        assert m[("process_resident_memory_bytes", ())] > 0 and ("process_start_time_seconds", ()) in m
        build = [labels for n, labels in m if n == "gasguard_build_info"]
        assert build == [(("component", "gateway"), ("python", build[0][1][1]), ("version", gasguard.__version__))]
        # before any frame: every rejection reason has a series at zero
        for reason in gwmetrics.REJECT_REASONS:
            assert m[("gasguard_gateway_rejected_total", (("reason", reason),))] == 0, reason
        port = (("kind", "serial"), ("port", "ttyGG0"))
        assert m[("gasguard_gateway_port_up", port)] == 1 and m[("gasguard_gateway_port_opens_total", port)] == 1
        assert m[("gasguard_gateway_info", (("clock", "real"), ("district", "d1"), ("gateway", "gw1")))] == 1
        # a leak alarm opens an incident; the gauges follow (the ticker refreshes them every 5 s)
        rig.cables[0].send(rig.nodes[0].alarm(code=2, value=260, state=0x15))
        wait_until(lambda: rig.daemon.plugins[0].engine.open_incidents(), 10, "an incident opens")
        rig.runner.call(rig.daemon.update_gauges)
        m = scrape()
        assert m[("gasguard_gateway_incidents_open", (("kind", "leak"),))] == 1
        assert m[("gasguard_gateway_incidents_overdue", (("deadline", "phone"),))] == 0
        assert m[("gasguard_gateway_devices_online", ())] == 1
        # the cable is pulled: the port is down
        rig.cables[0].unplug()
        wait_until(lambda: scrape()[("gasguard_gateway_port_up", port)] == 0, 10, "port_up 0 after the unplug")
        rig.cables[0].replug()
        wait_until(lambda: scrape()[("gasguard_gateway_port_opens_total", port)] == 2, 15, "reopened")
        assert scrape()[("gasguard_gateway_port_up", port)] == 1
    finally:
        rig.close()


DASHBOARD = ROOT / "monitoring" / "grafana" / "gasguard-dashboard.json"


def _exported_names(registry) -> set[str]:
    return {s.name for fam in registry.collect() for s in fam.samples} | \
        {fam.name for fam in registry.collect()}


def test_dashboard_queries_parse_and_name_only_metrics_the_services_export(tmp_path):
    """Every panel's PromQL (template variables given values) goes through promtool as a recording rule,
    and every gasguard_* / process_* name in it is one the gateway or the command service exports."""
    import json
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 25
    subst = {"$__rate_interval": "1m", "$__range": "1h", "$job": "gasguard-gateway", "$command_job":
             "gasguard-command", "$instance": ".*"}
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, e in enumerate(exprs):
        for k, v in subst.items():
            e = e.replace(k, v)
        rules += [f"      - record: dashboard:panel{i}", f"        expr: '{e}'"]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("\n".join(rules) + "\n")
    r = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _unknown_metrics(exprs) == set()
