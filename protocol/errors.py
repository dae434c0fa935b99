# The one error type every protocol decoder raises (SPEC.md section 8).


class ProtocolError(ValueError):
    """A frame or byte stream that does not follow protocol v1.

    `reason` is a short machine-readable word (SPEC.md section 8) that receivers count by;
    `fcnt` is the reconstructed counter where one is known (replay, counter_gap).
    """

    def __init__(self, reason, detail="", fcnt=None):
        super().__init__(reason if not detail else reason + ": " + detail)
        self.reason = reason
        self.detail = detail
        self.fcnt = fcnt


# Every `reason` a decoder raises (SPEC.md section 8), in the SPEC's order: receivers count by these.
REASONS = ("short", "long", "version", "type", "flags", "length", "field", "range", "mic", "replay",
           "counter_gap", "counter_exhausted", "crc", "cobs", "overflow")
