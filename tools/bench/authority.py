"""`gasguard bench authority`: what the authority checks cost where requests act (issue 14): signing,
verifying (signature, roster, durable replay record), and one fsynced audit record, per request, on this
machine's disk. Human acts are a few per minute; the figures say how far that is from any limit."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click

from gasguard.authority import AuditLog, ReplayGuard, sign_request, verify_request
from gasguard.authority import roster as RO
from gasguard.authority.bootstrap import bootstrap

TOPIC = "gasguard/v1/bench/gw-1/00c0ffee/cmd"


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def authority_figures(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="gg-bench-authority-") as d:
        d = Path(d)
        dist = bootstrap(d / "authority", "bench", {"root": "admin", "eng": "engineer"})
        ro = RO.load(dist.roster, dist.authority().public_key())
        key = dist.key("eng")
        replay = ReplayGuard(d / "replay.db")
        audit = AuditLog(d / "audit", recorder="bench")
        sign_s, verify_s, audit_s = [], [], []
        for i in range(n):
            body = {"request_id": f"r{i}", "cmd": "reset"}
            t0 = time.perf_counter()
            raw = sign_request(key, "eng", TOPIC, body)
            t1 = time.perf_counter()
            v = verify_request(raw, TOPIC, roster=ro, action="reset", replay=replay, district="bench")
            t2 = time.perf_counter()
            audit.record(category="command", type="reset", outcome="allowed", source=v.source(), event_id=v.nonce)
            t3 = time.perf_counter()
            sign_s.append(t1 - t0)
            verify_s.append(t2 - t1)
            audit_s.append(t3 - t2)
        replay.close()
        audit.close()
        per_record = sum(p.stat().st_size for p in (d / "audit").glob("audit-*.jsonl")) / n
    ms = lambda xs: {"median_ms": round(statistics.median(xs) * 1000, 3), "p99_ms": round(_pct(xs, 0.99) * 1000, 3)}  # noqa: E731
    return {"requests": n, "sign": ms(sign_s), "verify_with_replay_record": ms(verify_s),
            "audit_record_fsynced": ms(audit_s), "audit_bytes_per_record": round(per_record),
            "records_per_256MiB": int(256 * 1024 * 1024 // per_record)}


@click.command("authority")
@click.option("--requests", "n", default=500, show_default=True, help="signed requests to verify and record")
@click.option("--json", "as_json", is_flag=True)
def authority_bench(n, as_json):
    """Cost per operator request: sign, verify (signature + durable replay record), fsynced audit record."""
    import json
    out = authority_figures(n)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for k in ("sign", "verify_with_replay_record", "audit_record_fsynced"):
        click.echo(f"{k:28} median {out[k]['median_ms']:8.3f} ms   p99 {out[k]['p99_ms']:8.3f} ms")
    click.echo(f"audit record {out['audit_bytes_per_record']} B: {out['records_per_256MiB']:,} records in the "
               f"default 256 MiB capacity ({out['requests']} requests)")
