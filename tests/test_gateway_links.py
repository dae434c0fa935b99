"""The gateway's links to devices: downlink commands (signed frame on the pty, device ack published, timeout
published), the Semtech UDP packet-forwarder protocol with RSSI/SNR, and a serial port unplugged and
plugged back in."""

import json
import logging
import time

import paho.mqtt.client as mqtt
import pytest
import serial

from gasguard.gateway import config as gwconfig
from gasguard.testing.links import PacketForwarder
from gasguard.protocol.const import ALARM, CMD_SET_PARAM, CMD_STATUS, COMMAND
from gasguard.testing.rig import Rig
from gasguard.testing.schemas import VALIDATORS
from gasguard.testing.waits import wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(90)]


def _publish(port, topic, doc):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, json.dumps(doc) if isinstance(doc, dict) else doc, qos=1).wait_for_publish(5)
    finally:
        c.loop_stop()
        c.disconnect()


def _downlinks(node, link, n=1, timeout=10.0):
    got = []
    wait_until(lambda: got.extend(node.open_downlink(b) for b in link.downlinks()) or len(got) >= n, timeout,
               f"{n} downlink(s) for {node.dev:08x}")
    return got


@pytest.fixture
def rig(tmp_path, mosquitto):
    r = Rig(tmp_path, mosquitto.port, extra="[limits]\ncommand_retry = 0.3\n[batch]\ndelay = 0.1\n")
    yield r
    r.close()


def test_command_becomes_a_signed_frame_and_the_device_ack_is_published(rig, mosquitto):
    rig.start()
    a = rig.nodes[0]
    cable = rig.cables[0]
    cable.send(a.reading())                   # the gateway learns which port reaches the device
    rig.sub.wait(lambda ms: rig.readings(), 10)
    req = {"request_id": "req-1", "cmd": "set_param", "param": 6, "value": 600}
    signed = rig.signed("eng", rig.cmd_topic(a.dev), req)
    VALIDATORS["command-request"].validate(json.loads(signed))
    _publish(mosquitto.port, rig.cmd_topic(a.dev), signed)
    cmds = _downlinks(a, cable)               # opened with the device key: MIC and downlink counter good
    cmd = cmds[0]                             # (a retry every 0.3 s may follow: same cid)
    assert {f["cid"] for f in cmds} == {cmd["cid"]}
    assert cmd["type"] == "command" and cmd["cmd"] == CMD_SET_PARAM and cmd["args"] == b"\x06\x02\x58"
    cable.send(a.ack(COMMAND, cmd["cid"], result=0))
    (res,) = rig.sub.wait(lambda ms: rig.sub.on("/cmd/result"), 10)
    assert res["request_id"] == "req-1" and res["result"] == "ok" and res["cmd"] == "set_param"
    assert res["cid"] == cmd["cid"] and res["dev"] == f"{a.dev:08x}" and res["operator"] == "eng"
    assert rig.metric("gasguard_gateway_command_results_total", result="ok") == 1
    rig.validated()


def test_undeliverable_and_invalid_commands_get_a_published_result(rig, mosquitto):
    rig.start()
    a, b = rig.nodes
    cable = rig.cables[0]
    cable.send(a.reading())
    rig.sub.wait(lambda ms: rig.readings(), 10)
    # a never answers: retried every limits.command_retry s until ttl_s, then a "timeout" result
    _publish(mosquitto.port, rig.cmd_topic(a.dev), rig.signed("eng", rig.cmd_topic(a.dev),
                                                              {"request_id": "lost-1", "cmd": "status", "ttl_s": 1.2}))
    # b was never heard: nothing to send it on; it times out the same way
    _publish(mosquitto.port, rig.cmd_topic(b.dev), rig.signed("eng", rig.cmd_topic(b.dev),
                                                              {"request_id": "lost-2", "cmd": "status", "ttl_s": 1}))
    # not JSON, and a device that is not ours: rejected at once, with the reason
    _publish(mosquitto.port, rig.cmd_topic(a.dev), b"reset please")
    _publish(mosquitto.port, rig.cmd_topic(0x0badbad0), rig.signed("eng", rig.cmd_topic(0x0badbad0),
                                                                   {"request_id": "who-1", "cmd": "reset"}))
    results = rig.sub.wait(lambda ms: len(rig.sub.on("/cmd/result")) >= 4 and rig.sub.on("/cmd/result"), 10)
    by_id = {r["request_id"]: r for r in results}
    assert by_id["lost-1"]["result"] == "timeout" and by_id["lost-2"]["result"] == "timeout"
    assert "tries" in by_id["lost-1"]["detail"]
    assert by_id["who-1"]["result"] == "rejected" and "not a commissioned device" in by_id["who-1"]["detail"]
    assert by_id[""]["result"] == "rejected" and by_id[""]["reason"] == "unsigned" and "JSON" in by_id[""]["detail"]
    sent = _downlinks(a, cable, n=2)          # at least one retry went out before the deadline
    assert all(f["cmd"] == CMD_STATUS for f in sent) and len({f["cid"] for f in sent}) == 1
    assert len({f["fcnt"] for f in sent}) == len(sent)      # each retry is a new downlink counter
    rig.validated()


def test_semtech_udp_forwarder_up_and_down_with_rssi_snr(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, cables=1, udp=True, extra="[batch]\ndelay = 0.1\n")
    fwd = PacketForwarder(rig.udp_addr)
    try:
        rig.start()
        a, b = rig.nodes
        tok = fwd.pull()                      # PULL_DATA: the forwarder says where downlinks go
        fwd.poll(0.3)
        assert (4, tok) in fwd.acks           # PULL_ACK, same token
        tok = fwd.push(a.reading(gas=40), rssi=-101, lsnr=-3.5)
        alarm = a.alarm(code=2)
        fwd.push(alarm, rssi=-99, lsnr=2.0)
        fwd.push(b.reading(), stat=-1)        # PHY CRC failed: counted as noise, never decoded
        fwd.poll(0.5)
        assert (1, tok) in fwd.acks           # PUSH_ACK
        rig.sub.wait(lambda ms: rig.readings() and rig.sub.on("/alarm"), 10)
        rig.cables[0].send(alarm)            # the same alarm also heard late on a serial modem: not again
        (r,) = rig.readings()
        assert r["rx"] == {"transport": "udp", "gw": "aa555a0000000001", "rssi": -101, "snr": -3.5,
                           "freq": 470.9, "datr": "SF11BW125"}
        (al,) = rig.sub.on("/alarm")
        assert al["rx"]["rssi"] == -99 and al["rx"]["snr"] == 2.0
        # the ack goes back as PULL_RESP through the forwarder the alarm came in on (answered with TX_ACK)
        wait_until(lambda: fwd.poll(0.1) or fwd.txpk, 10, "PULL_RESP")
        (ack,) = [a.open_downlink(raw) for raw in fwd.downlinks()]
        assert ack["type"] == "ack" and ack["ref_type"] == ALARM
        assert fwd.txpk[0]["ipol"] is True and fwd.txpk[0]["freq"] == 470.9
        wait_until(lambda: rig.rejected("duplicate") == 1 and rig.rejected("crc") == 1, 5, "duplicate + crc counted")
        # a forwarder that cannot transmit says so in TX_ACK: counted and logged
        fwd.sock.sendto(b"\x02\x00\x07\x05" + fwd.eui + b'{"txpk_ack":{"error":"TOO_LATE"}}', rig.udp_addr)
        wait_until(lambda: rig.daemon.udp.tx_errors.get("TOO_LATE") == 1, 5, "TX_ACK error counted")
        rig.validated()
    finally:
        fwd.close()
        rig.close()


def test_serial_unplug_and_replug_logs_and_resumes(rig, caplog):
    caplog.set_level(logging.INFO, logger="gasguard.gateway.serial")
    rig.start()
    a = rig.nodes[0]
    cable = rig.cables[0]
    cable.send(a.reading())
    rig.sub.wait(lambda ms: len(rig.readings()) == 1, 10)
    cable.unplug()
    wait_until(lambda: "disconnected" in caplog.text, 10, "the unplug is logged")
    wait_until(lambda: "retrying every" in caplog.text, 10, "a failed reopen")   # the port stays away: retried
    cable.replug()                            # a new pty behind the same configured path
    wait_until(lambda: "again after a disconnect" in caplog.text, 15, "the replug is logged")
    cable.send(a.reading())
    rig.sub.wait(lambda ms: len(rig.readings()) == 2, 10)
    assert rig.daemon.serial[0].opened == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "gasguard.gateway.serial"]
    assert any("disconnected" in m and "waiting for it to come back" in m for m in lines), lines


def test_lora_modem_on_a_uart_uses_the_serial_framing_and_says_so(tmp_path, mosquitto):
    rig = Rig(tmp_path, mosquitto.port, extra="[batch]\ndelay = 0.1\n")
    text = rig.config_path.read_text().replace(f'port = "{rig.cables[0].link}"',
                                               f'port = "{rig.cables[0].link}"\nkind = "lora_uart"\nname = "modem0"')
    rig.config_path.write_text(text)
    rig.cfg = gwconfig.load(rig.config_path)
    try:
        rig.start()
        rig.cables[0].send(rig.nodes[0].reading())
        rig.sub.wait(lambda ms: rig.readings(), 10)
        assert rig.readings()[0]["rx"] == {"transport": "lora_uart", "port": "modem0", "rssi": None, "snr": None}
        rig.validated()
    finally:
        rig.close()


def test_busy_port_is_logged_and_opened_once_free(rig, caplog):
    caplog.set_level(logging.INFO, logger="gasguard.gateway.serial")
    holder = serial.Serial(str(rig.cables[0].link), exclusive=True)   # another program holds the port
    try:
        rig.start(wait=False)
        wait_until(lambda: "busy: another program holds it" in caplog.text, 10, "the busy port is logged")
        assert "fuser" in caplog.text and rig.daemon.serial[0].ser is None
    finally:
        holder.close()
    wait_until(lambda: rig.daemon.serial[0].ser is not None, 15, "opened once free")
    rig.cables[0].send(rig.nodes[0].reading())
    rig.sub.wait(lambda ms: rig.readings(), 10)
