# `machine` for the virtual board: runs INSIDE MicroPython (WebAssembly port), installed as /rom/machine.py.
#
# Every class talks to the board's HAL in the Node host (tools/sim/vboard_host.mjs) through the JS module
# `vbhal`, and behaves like the hardware it stands for: ADC.read_u16() returns what the analog front end
# is set to (with a few LSB of noise), an output Pin drives a line the host can read, UART.read() never
# waits, WDT resets the board when it is not fed in time, NVS keeps values across power cycles.
# Not part of the firmware: it is the "chip".

import binascii

import vbhal


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        if value is not None:
            self.value(value)

    def init(self, mode=-1, pull=-1, value=None):
        if mode != -1:
            self.mode = mode
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return vbhal.pin_get(self.id)
        vbhal.pin_set(self.id, 1 if v else 0)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def __call__(self, v=None):
        return self.value(v)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3

    def __init__(self, pin, atten=None):
        self.ch = pin.id if isinstance(pin, Pin) else pin

    def atten(self, a):
        pass

    def width(self, w):
        pass

    def read_u16(self):
        return vbhal.adc(self.ch)

    def read(self):
        return vbhal.adc(self.ch) >> 4

    def read_uv(self):
        return vbhal.adc(self.ch) * 3300000 // 65535


class UART:
    def __init__(self, id, baudrate=115200, **kw):
        self.id = id
        self.baudrate = baudrate

    def init(self, baudrate=115200, **kw):
        self.baudrate = baudrate

    def any(self):
        return vbhal.uart_any()

    def read(self, n=-1):
        h = vbhal.uart_read(n)
        if not h:
            return None
        return binascii.unhexlify(h)

    def write(self, buf):
        return vbhal.uart_write(binascii.hexlify(buf).decode())

    def flush(self):
        pass


class WDT:
    def __init__(self, id=0, timeout=5000):
        vbhal.wdt_start(timeout)

    def feed(self):
        vbhal.wdt_feed()


class Timer:
    """Periodic/one-shot callbacks, run by the virtual board between awaits of the firmware loop."""

    PERIODIC = 1
    ONE_SHOT = 0

    def __init__(self, id=-1, **kw):
        self.cb = None
        if kw:
            self.init(**kw)

    def init(self, mode=1, period=1000, callback=None, freq=None):
        import asyncio

        if freq:
            period = 1000 // freq
        self.cb = callback
        self.active = True

        async def run():
            while self.active:
                await clock().sleep_ms(period)
                if self.active and self.cb:
                    self.cb(self)
                if mode == 0:
                    self.active = False

        asyncio.create_task(run())

    def deinit(self):
        self.active = False


class NVS:
    """esp32.NVS-like key/value storage (ints and blobs) kept by the host in the flash folder."""

    def __init__(self, namespace):
        self.ns = namespace

    def set_i32(self, key, value):
        vbhal.nvs_set(self.ns, key, str(int(value)))

    def get_i32(self, key):
        v = vbhal.nvs_get(self.ns, key)
        if v is None:
            raise OSError(-0x1102)  # ESP_ERR_NVS_NOT_FOUND
        return int(v)

    def set_blob(self, key, value):
        vbhal.nvs_set(self.ns, key, binascii.hexlify(value).decode())

    def get_blob(self, key, buf):
        v = vbhal.nvs_get(self.ns, key)
        if v is None:
            raise OSError(-0x1102)
        b = binascii.unhexlify(v)
        buf[:len(b)] = b
        return len(b)

    def erase_key(self, key):
        vbhal.nvs_erase(self.ns, key)

    def commit(self):
        vbhal.nvs_commit()


class _Clock:
    """The board's time: virtual (advanced by the control channel) or real, as the host was started."""

    def ticks_ms(self):
        return vbhal.ticks_ms()

    async def sleep_ms(self, ms):
        if await vbhal.sleep(ms):
            raise KeyboardInterrupt  # Ctrl-C arrived on the console while we waited


_clock = _Clock()


def clock():
    return _clock


def flash_sync(path=None):
    """Push a just-written file to the board's flash folder (real flash is non-volatile by itself)."""
    vbhal.flash_sync(path or "")


def reset():
    vbhal.hard_reset()
    raise SystemExit


def soft_reset():
    raise SystemExit


def reset_cause():
    return vbhal.reset_cause()


def unique_id():
    return b"vboard01"


def freq(f=None):
    return 240000000


def idle():
    pass


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
