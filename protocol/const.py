# Numbers fixed by protocol v1 (SPEC.md). Plain ints so the module is identical on CPython and MicroPython.

VERSION = 1
UP = 0
DOWN = 1

MIC_LEN = 6          # SPEC 5: 48-bit truncated HMAC-SHA256
HEAD_LEN = 7         # HDR + DEV + FCNT16
MAX_GAP = 16384      # SPEC 4: largest accepted forward jump of the frame counter
MAX_FCNT = 0xFFFFFFFF
COUNTER_BLOCK = 256  # SPEC 4: counters a node reserves per flash write
MAX_DATA = 8         # event data / command arguments
MAX_FRAME = HEAD_LEN + 2 + MAX_DATA + MIC_LEN
NA16 = 0xFFFF        # "no valid value" for gas and pressure
BATTERY_MAINS = 0xFF

# frame types (HDR bits 5-3)
READING = 0
ALARM = 1
EVENT = 2
COMMAND = 3
ACK = 4
TYPE_NAMES = ("reading", "alarm", "event", "command", "ack")

FLAG_INLET = 0x01    # reading: an inlet pressure field follows

# state byte (SPEC 3.2)
VALVE_OPEN = 0
VALVE_CLOSED = 1
VALVE_MOVING = 2
VALVE_UNKNOWN = 3
ST_VALVE_MASK = 0x03
ST_LATCHED = 0x04
ST_GAS_SHIFT = 3
ST_GAS_MASK = 0x18
ST_FAULT = 0x20
ST_OVER_RANGE = 0x40
ST_PTRIP = 0x80

# alarm codes (SPEC 3.4)
AL_GAS_L1 = 1
AL_GAS_L2 = 2
AL_OPSO = 3
AL_UPSO = 4
AL_SENSOR_FAULT = 5
AL_VALVE_FAULT = 6
AL_TAMPER = 7
AL_LOW_BATTERY = 8
AL_CLEARED = 0x80
ALARM_NAMES = {1: "gas_l1", 2: "gas_l2", 3: "opso", 4: "upso", 5: "sensor_fault",
               6: "valve_fault", 7: "tamper", 8: "low_battery"}

SENSOR_GAS = 1
SENSOR_PRESSURE = 2
SENSOR_INLET = 3
SENSOR_STORAGE = 4
FAULT_OPEN = 1
FAULT_SHORT = 2
FAULT_RANGE = 3
FAULT_STUCK = 4
FAULT_WRITE = 5

# event codes (SPEC 3.5)
EV_BOOT = 1
EV_FAULT = 2
EV_FAULT_CLEARED = 3
EV_TAMPER = 4
EV_VALVE = 5
EV_CALIBRATION = 6
EV_CONFIG = 7
EV_SELFTEST = 8
EV_STATUS = 9
EVENT_NAMES = {1: "boot", 2: "fault", 3: "fault_cleared", 4: "tamper", 5: "valve",
               6: "calibration", 7: "config", 8: "selftest", 9: "status"}

# valve-change causes (EV_VALVE data byte 2)
CAUSE_GAS = 1
CAUSE_OPSO = 2
CAUSE_UPSO = 3
CAUSE_FAULT = 4
CAUSE_RESET = 5
CAUSE_SELFTEST = 6
CAUSE_MANUAL = 7

# commands (SPEC 3.6)
CMD_RESET = 1
CMD_SET_PARAM = 2
CMD_STATUS = 3
CMD_SELFTEST = 4
COMMAND_NAMES = {1: "reset", 2: "set_param", 3: "status", 4: "selftest"}
COMMAND_CODES = {name: code for code, name in COMMAND_NAMES.items()}

# parameters (SET_PARAM / CONFIG)
P_GAS_L1 = 1
P_GAS_L2 = 2
P_OPSO = 3
P_UPSO = 4
P_SAMPLE_MS = 5
P_REPORT_S = 6
P_DEBOUNCE_MS = 7
P_HYSTERESIS = 8
P_SETPOINT = 9       # station outlet set point (pressure encoding)
P_OPSO_PCT = 10      # station OPSO, % of set point
P_UPSO_PCT = 11      # station UPSO, % of set point
PARAM_NAMES = {1: "gas_l1", 2: "gas_l2", 3: "opso", 4: "upso", 5: "sample_ms",
               6: "report_s", 7: "debounce_ms", 8: "hysteresis", 9: "setpoint", 10: "opso_pct", 11: "upso_pct"}
PARAM_IDS = {name: pid for pid, name in PARAM_NAMES.items()}
PRESSURE_PARAMS = (P_OPSO, P_UPSO, P_SETPOINT)   # values in the pressure encoding (SPEC 3.1), others plain u16

# ack results (SPEC 3.7)
R_OK = 0
R_REFUSED = 1
R_OUT_OF_BOUNDS = 2
R_UNKNOWN = 3
R_BUSY = 4
R_FAILED = 5
R_BAD_ARGS = 6
RESULT_NAMES = ("ok", "refused", "out_of_bounds", "unknown", "busy", "failed", "bad_args")
