"""The real gateway daemon (`gasguard gateway run`) as its own process on a board's port, for the end-to-end
and fault tests: it can be stopped, SIGKILLed and restarted with the same spool, registry and grading state.
"""

from __future__ import annotations

import time
from pathlib import Path

from gasguard.authority.bootstrap import bootstrap
from gasguard.authority.envelope import sign_request
from gasguard.protocol.topics import CMD, Topics
from gasguard.testing.config import write_config
from gasguard.testing.gateway import GatewayProcess
from gasguard.registry import Device, Registry

DISTRICT = "lixia"
GATEWAY_ID = "hil-gw"


def registry_for(path: Path, board, **extra) -> Path:
    """A registry holding the board as a commissioned device (what 'gasguard device' writes)."""
    with Registry(path) as r:
        r.add_many([Device(dev_id=board.dev, key=board.key, profile=board.config["profile"], state="commissioned",
                           site_name=f"HIL bench {board.role}", address="bench", **extra)])
    return path


class HilGateway(GatewayProcess):
    """The gateway on the board's port, with the grading plugin; its files in `workdir`."""

    def __init__(self, workdir: Path, port: str, mqtt_port: int, registry: Path):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # the district's operators (issue 14): commands are signed, by an engineer unless a test says otherwise
        self.authority = bootstrap(self.dir / "authority", DISTRICT, {"root": "admin", "eng": "engineer",
                                                                      "op": "operator"})
        cfg = write_config(
            self.dir / "gateway.toml", registry=registry, spool=self.dir / "spool.db", mqtt_port=mqtt_port,
            serial=[port], gateway_id=GATEWAY_ID, district=DISTRICT,
            # a command not acked within 1 s (real time) is repeated: the board runs faster than real time here
            extra=self.authority.gateway_toml() + f'[limits]\ncommand_retry = 1\ncommand_timeout = 60\n\n'
                  f'[metrics]\ntick_interval = 0.2\nstats_interval = 1\n\n[plugins.grading]\n'
                  f'state_path = "{self.dir / "grading.json"}"\nreporter_unit = "HIL bench"\n')
        super().__init__(cfg, self.dir / "gateway.log")

    def start(self) -> "HilGateway":
        super().start()
        self.wait_log(" open (", timeout=20)
        return self

    def command(self, sub, dev: int, request_id: str, cmd: str = "status", by: str = "eng") -> bytes:
        """A command from the district over MQTT (QoS 1), signed by `by` as the console sends it; returns
        what was published (a test may replay it)."""
        topic = Topics().gateway(DISTRICT, GATEWAY_ID).device(dev, CMD)
        raw = sign_request(self.authority.key(by), by, topic, {"request_id": request_id, "cmd": cmd})
        sub.c.publish(topic, raw, qos=1).wait_for_publish(5)
        return raw


def run_until(board, cond, what: str, board_ms: int = 60_000, step: int = 500, wall_s: float = 60,
              min_wall_s: float = 15):
    """Let the board run (its time) in steps while the gateway works (real time) until cond() holds.
    Fails once the board has run `board_ms` and at least `min_wall_s` have passed (the gateway and broker
    need real time whatever the board's clock says; a loaded CI machine is slow), or after `wall_s`."""
    t = 0
    t0 = time.monotonic()
    while True:
        r = cond()
        if r:
            return r
        waited = time.monotonic() - t0
        if (t >= board_ms and waited > min_wall_s) or waited > wall_s:
            raise AssertionError(f"{what}: not after {t} ms of board time / {waited:.0f} s wall; gateway log: "
                                 f"{getattr(board, 'gateway_log', '(no gateway)')}")
        if t < board_ms:
            board.rig.elapse(step)
            t += step
        time.sleep(0.02)  # the gateway (real time) reads, acks; the board takes the ack at its next pass


def quiet(board, ms: int, step: int = 1000) -> int:
    """Bytes the node put on the line over `ms` of board time (0 = every alarm and event was acked)."""
    before = board.rig.tx_bytes()
    for _ in range(ms // step):
        board.rig.elapse(step)
        time.sleep(0.01)
    return board.rig.tx_bytes() - before
