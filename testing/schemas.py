"""Every message the gateway publishes checked against gateway/schemas/ (the topic tree of
gateway/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from referencing import Registry as SchemaRegistry, Resource

import gasguard.gateway

SCHEMA_DIR = Path(gasguard.gateway.__file__).parent / "schemas"


def _schemas():
    docs = {p.name: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.schema.json")}
    reg = SchemaRegistry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs.values())
    return {name.removesuffix(".schema.json"): jsonschema.Draft202012Validator(d, registry=reg)
            for name, d in docs.items()}


VALIDATORS = _schemas()


def schema_for(topic: str, root: str) -> str:
    """The schema a topic's payload must follow (the topic tree of gateway/README.md)."""
    assert topic.startswith(root + "/"), f"{topic} is outside the gateway's tree {root}"
    rest = topic[len(root) + 1:].split("/")
    if len(rest) == 1:
        return {"reading": "readings", "status": "gateway-status", "event": "gateway-event",
                "stats": "stats"}[rest[0]]
    leaf = "/".join(rest[1:])
    if rest[0] == "command" and rest[1] == "result":   # gasguard/v1/<district>/command/result/<gateway>
        return "request-result"
    return {"state": "state", "alarm": "alarm", "event": "event", "cmd/result": "command-result",
            "cmd": "command-request"}[leaf]


def validate(topic: str, doc: dict, root: str) -> str:
    name = schema_for(topic, root)
    VALIDATORS[name].validate(doc)
    return name
