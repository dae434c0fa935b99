"""The topic tree is built in one place (protocol/topics.py) from the configured root: the gateway's own topics,
the incidents and the command's answers all follow a root other than the default."""

from types import SimpleNamespace

import pytest

from gasguard.command.console import CommandClient
from gasguard.gateway.config import ConfigError, load
from gasguard.gateway.grading_plugin import make_plugin
from gasguard.protocol.topics import ROOT, Topics
from gasguard.testing.config import write_config
from grading_helpers import T0, alarm, device


def test_tree_from_the_default_root():
    t = Topics()
    gw = t.gateway("d1", "gw1")
    assert (ROOT, gw.root, gw.reading, gw.cmd_sub) == ("gasguard/v1", "gasguard/v1/d1/gw1", "gasguard/v1/d1/gw1/reading",
                                                      "gasguard/v1/d1/gw1/+/cmd")
    assert gw.device(0xA1, "cmd/result") == "gasguard/v1/d1/gw1/000000a1/cmd/result"
    assert gw.dev_of_cmd("gasguard/v1/d1/gw1/000000a1/cmd") == 0xA1
    assert [gw.dev_of_cmd(x) for x in ("gasguard/v1/d1/gw2/000000a1/cmd", "gasguard/v1/d1/gw1/a1/cmd",
                                       "gasguard/v1/d1/gw1/000000a1/state", "gasguard/v1/d1/gw1/0000zza1/cmd")] \
        == [None] * 4
    cmd = t.command("d1")
    assert cmd.parse("gasguard/v1/d1/command/ack/d1-leak-1") == ("ack", "d1-leak-1")
    assert cmd.parse("gasguard/v1/d1/command/sync") == ("sync", None)
    assert [cmd.parse(x) for x in ("gasguard/v1/d2/command/ack/x", "gasguard/v1/d1/command/ack/",
                                   "gasguard/v1/d1/command/incident/x")] == [None] * 3
    with pytest.raises(ValueError):
        Topics("gasguard/#")


def test_a_configured_root_reaches_gateway_incidents_and_console(tmp_path):
    path = write_config(tmp_path / "gw.toml", registry=tmp_path / "r.db", spool=tmp_path / "s.db", mqtt_port=1883,
                        udp="127.0.0.1:1700", gateway_id="gw7", district="north")
    text = path.read_text().replace("[mqtt]\n", '[mqtt]\ntopic_root = "acme/v2"\n')
    path.write_text(text)
    cfg = load(path)
    assert cfg.root == "acme/v2/north/gw7" and cfg.topics.status == "acme/v2/north/gw7/status"

    ctx = SimpleNamespace(gateway_id="gw7", district="north", root=cfg.root, registry_path=None,
                          clock=lambda: T0, topic_root=cfg.topic_root)
    plugin = make_plugin({"state_path": ""}, ctx)
    assert plugin.subscriptions == ["acme/v2/north/command/ack/+", "acme/v2/north/command/input/+",
                                    "acme/v2/north/command/sync"]
    out = plugin.observe(alarm(device(0xA001, households=12_000), T0, 4, value=900, ptrip=True))
    topics = [t for t, _, _ in out]
    assert topics and all(t.startswith("acme/v2/") for t in topics), topics
    iid = out[0][1]["incident_id"]
    assert topics[0] == f"acme/v2/north/command/incident/{iid}"
    # the command's acknowledgement under the configured root reaches the engine; under the default it does not
    assert plugin.on_message(f"{ROOT}/north/command/ack/{iid}", {"by": "duty"}, T0 + 10) == []
    assert plugin.on_message(f"acme/v2/north/command/ack/{iid}", {"by": "duty"}, T0 + 10)

    console = CommandClient("127.0.0.1", 1883, "north", topic_root="acme/v2")
    assert console.topic == "acme/v2/north/command/incident/+"


def test_a_bad_root_is_refused_with_the_fix(tmp_path):
    path = write_config(tmp_path / "gw.toml", registry=tmp_path / "r.db", spool=tmp_path / "s.db", mqtt_port=1883,
                        udp="127.0.0.1:1700")
    path.write_text(path.read_text().replace("[mqtt]\n", '[mqtt]\ntopic_root = "a/+/b"\n'))
    with pytest.raises(ConfigError, match="mqtt.topic_root"):
        load(path)
