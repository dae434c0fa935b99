# The HIL rig on an ESP32 DevKit (wiring: hil_tests/README.md "The rig"). Copy rig.py and this file to the
# rig board (`mpremote cp rig.py main.py :`); it then answers the rig protocol on its USB serial port,
# which is the suite's --rig-port. The node's inlet and battery inputs need an MCP4728 (not driven here:
# `set` says so when asked for them).

import json
import sys

import machine

from rig import Rig


class Dac8:
    """ESP32 DAC (8 bits, 0..3.3 V) with a 16-bit write, like the node's ADC reads."""

    def __init__(self, pin):
        self.dac = machine.DAC(machine.Pin(pin))

    def write_u16(self, code):
        self.dac.write(code >> 8)


def main():
    power = machine.Pin(14, machine.Pin.OUT, value=1)       # relay / load switch: node powered at start
    valve = machine.Pin(27, machine.Pin.IN, machine.Pin.PULL_DOWN)
    rig = Rig({"gas": Dac8(25), "pressure": Dac8(26)}, valve, power)
    valve.irq(rig.on_valve_edge, machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING)
    inp = sys.stdin.buffer
    while True:
        line = inp.readline()
        if line:
            sys.stdout.write(json.dumps(rig.handle(line.strip())) + "\n")


main()
