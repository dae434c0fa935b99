# Persistent node state in /gg_state.json (firmware/README.md "Device filesystem layout").
#
# Written atomically: the new content goes to /gg_state.tmp, which is then renamed over /gg_state.json
# (rename is atomic on LittleFS and on the virtual board's flash). A power cut leaves either the old or
# the new file, never a torn one. `flush` is the board's hook to push the write to non-volatile storage
# (a no-op on real flash; the virtual board copies the file to its flash folder on the host).

import json
import os

STATE_DEFAULTS = {"latched": False, "latch_cause": 0, "valve": 0, "up_ceiling": 0, "down_last": 0,
                  "params": {}}


class StateStore:
    def __init__(self, root="/", flush=None):
        self.path = root.rstrip("/") + "/gg_state.json"
        self.tmp = root.rstrip("/") + "/gg_state.tmp"
        self.flush = flush
        self.writes = 0
        self.state = dict(STATE_DEFAULTS)

    def load(self):
        """Read the state (defaults for missing fields); a left-over temp file is discarded."""
        try:
            os.remove(self.tmp)
        except OSError:
            pass
        try:
            with open(self.path) as f:
                got = json.load(f)
            if isinstance(got, dict):
                self.state.update(got)
        except (OSError, ValueError):
            pass
        return self.state

    def save(self, **changes):
        """Apply `changes` and write the whole state atomically before returning."""
        self.state.update(changes)
        with open(self.tmp, "w") as f:
            json.dump(self.state, f)
        os.rename(self.tmp, self.path)
        self.writes += 1
        if self.flush is not None:
            self.flush(self.path)
        return self.state


def read_config(root="/"):
    """(config dict, key bytes) from /gg_config.json and /gg_key.bin; OSError/ValueError say what is missing."""
    base = root.rstrip("/")
    try:
        with open(base + "/gg_config.json") as f:
            cfg = json.load(f)
    except OSError:
        raise OSError("no /gg_config.json: provision the board (gasguard device provision)")
    with open(base + "/gg_key.bin", "rb") as f:
        key = f.read()
    if len(key) != 16:
        raise ValueError("/gg_key.bin must hold exactly 16 bytes, has %d: re-provision the key" % len(key))
    return cfg, key
