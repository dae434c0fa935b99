"""Where the gateway's acts are authorised (issue 14): node commands (dispatch.py), acknowledgements and
operator input (the observers' plugins) act only when signed by someone in the district's roster whose role
permits it, fresh and not replayed. The check itself is gasguard.authority's Gate (roster, replay store,
audit log); this module builds it from `[authority]` and turns its verdicts into the gateway's answers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gasguard.authority import AuditLog, Gate, Refused
from gasguard.authority.errors import AuthorityError
from gasguard.authority.secretfile import load_public
from gasguard.protocol.topics import Topics

from . import payloads
from .commands import parse_request
from .config import ConfigError


def open_gate(cfg, on_warning=None) -> Gate:
    """The audit log and the Gate of `[authority]`; ConfigError (exit 2) names what is wrong. Audit records
    carry wall-clock UTC (IEC 62443-4-2 CR 2.11), also when the daemon runs a drill clock."""
    spool = Path(cfg.spool)
    try:
        audit = AuditLog(cfg.audit_dir or spool.parent / "audit", recorder=cfg.gateway_id,
                         segment_bytes=cfg.audit_segment_bytes, capacity_bytes=cfg.audit_capacity_bytes,
                         warn_fraction=cfg.audit_warn_fraction, on_warning=on_warning)
        trusted = load_public(cfg.trust) if cfg.trust else None
        return Gate(cfg.roster, trusted, cfg.replay or spool.with_name(spool.name + ".replay.db"), audit,
                    district=cfg.district, max_age_s=cfg.max_age_s, max_skew_s=cfg.max_skew_s)
    except AuthorityError as e:
        raise ConfigError("authority", str(e)) from None
    except OSError as e:         # the audit folder or replay store cannot be made or written
        raise ConfigError("authority.audit_dir", f"{e.filename or cfg.audit_dir}: {e.strerror}: the gateway user must "
                          "be able to write its audit folder and replay store (chown gasguard; chmod u+rwx)") from None


def result_topic(cfg) -> str:
    """Where this gateway answers acknowledgements and operator input."""
    return Topics(cfg.topic_root).command(cfg.district).result(cfg.gateway_id)


def command_action(body: dict) -> str:
    """The authority action of a node-command body: its cmd, once the request's form is checked."""
    return parse_request(body)["cmd"]


def request_id_of(payload: bytes) -> str:
    """The request_id of a refused command, signed or not, for its answer (best effort, never raises)."""
    try:
        doc = json.loads(payload)
        if isinstance(doc, dict) and isinstance(doc.get("body"), str):
            doc = json.loads(doc["body"])
        return str(doc.get("request_id", ""))[:128] if isinstance(doc, dict) else ""
    except (ValueError, RecursionError):
        return ""


def authorise_act(gate: Gate, answer_topic: str, gateway_id: str, topic: str, payload: bytes, action, now: float):
    """An acknowledgement or operator input checked by `gate`: (the verified body with "by" the verified
    operator and "via" the console that signed for them, or None when refused; the answer for
    `answer_topic`; the refusal reason or None). Used by the daemon and by test harnesses that drive a
    plugin the way the daemon does."""
    sha = hashlib.sha256(payload).hexdigest()
    try:
        v = gate.check(topic, payload, action=action, category="incident",
                       detail={"incident_id": topic.rsplit("/", 1)[-1]})
    except Refused as r:
        return None, (answer_topic, payloads.request_result(
            gateway_id, now, topic, sha, "refused", r.reason, str(r), r.operator), "event", False), r.reason
    doc = dict(v.body, by=v.operator.id)
    if v.signer.id != v.operator.id:
        doc["via"] = v.signer.id
    return doc, (answer_topic, payloads.request_result(
        gateway_id, now, topic, sha, "allowed", "", v.action, v.operator.id), "event", False), None


def sha256_file(path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None
