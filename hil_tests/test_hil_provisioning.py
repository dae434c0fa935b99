"""Flashing and configuring through `gasguard device` (the technician CLI, its own process): a blank board
becomes a commissioned node whose frames verify with the registry's key, and runs the configured
threshold."""

from gasguard.registry import Registry
from gasguard.protocol import const
from hil_node import is_alarm, need_rig

SAMPLE, DEBOUNCE = 1000, 2000


def test_device_flash_and_config_make_a_commissioned_node(provisioned_household):
    n = provisioned_household
    flash, config, show = n.board.cli["flash"], n.board.cli["config"], n.board.cli["show"]
    assert flash["verified"] == flash["files"] > 0                 # every file checked by SHA-256 on the board
    assert flash["boot"]["profile"] == "household"                 # a BOOT event verified with the registry key
    assert flash["compiled"]                                       # .mpy bytecode, as the technician flashes it
    assert config["changed"] == {"gas_l1": 120} and config["ok"]
    with Registry(n.board.registry) as r:
        assert r.get(n.dev).state == "commissioned"
    assert show["params"]["gas_l1"] == 120 and show["source"]["gas_l1"] == "config"
    # the node answers with the identity and key the registry holds (Node verifies MIC and dev id)
    n.command(const.CMD_STATUS, 31)
    assert n.expect_ack(31)["result"] == const.R_OK and not n.rejected


def test_configured_warning_level_is_what_the_node_runs(provisioned_household):
    need_rig(provisioned_household, "the gas input")
    n = provisioned_household
    n.set_gas(110)                        # over the default 10 % LEL, under the configured 12 % LEL
    n.expect_no_frame(lambda f: f["type"] == "alarm", DEBOUNCE + 4 * SAMPLE, "an alarm under the configured level")
    n.set_gas(130)
    al = n.expect_frame(is_alarm(const.AL_GAS_L1), DEBOUNCE + 3 * SAMPLE, "level-1 alarm over 12 % LEL")
    assert 120 <= al["value"] <= 140
