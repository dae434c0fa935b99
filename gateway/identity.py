"""One gateway id, one gateway: catching a second process that publishes as this one (issue 17).

A substation's second gateway set up from a copy of the first one's gateway.toml keeps its [gateway] id. Both
then publish under one topic root, and with one MQTT client id the broker hands the connection to whichever
connected last: each takes it from the other about once a reconnect_min, for ever. Readings stay in each
spool (nothing is lost), but the command sees one gateway going on and off line, and two gateways' devices,
retained states and counters mixed under one name. Nothing else would say why.

Every process puts a random `instance` (and its host name) in its birth, Will and clean stop, and subscribes to
its own status topic before it publishes its birth, so that what it receives there is either its own birth
coming back or what somebody else published as this gateway. `IdentityWatch.observe` tells them apart:

- another instance's status published while this process is subscribed (the retain flag clear: MQTT clears it
  for a message that matches an existing subscription) and saying online: another process connected as this
  gateway now (it can do that alongside this one only with its own [mqtt] client_id);
- another instance's status retained at the broker, seen at two connections of this process after its own
  birth came back once: something published as this gateway while this one was off the broker, twice. With
  one client id that is the takeover: each connect finds the other's Will or birth.

Not evidence: another instance's status at this process's first connect (the previous run's Will, or an older
gateway's status without an instance), a Will (online false) arriving live (a cluster node may publish a dead
session's Will late), or one retained sighting after a failover (a node whose copy lags). A real duplicate
repeats every reconnect, so requiring two costs a few seconds.
"""

from __future__ import annotations

import os
import socket


class IdentityWatch:
    def __init__(self):
        self.instance = os.urandom(6).hex()      # this process, in its birth, Will and clean stop
        self.host = socket.gethostname()
        self.armed = False                       # this process's own birth has come back from the broker
        self.retained_at: set[int] = set()       # connections at which another instance's retained status came
        self.other: tuple[str, str] | None = None   # (instance, host) of the last other process seen
        self.conflicts = 0                       # sightings counted as evidence
        self.echoes = 0                          # this process's births come back live (one per connection)

    def observe(self, doc: dict, retained: bool, connection: int) -> bool:
        """A status message on this gateway's own status topic (`doc` parsed, `retained` its retain flag,
        `connection` the publisher's count of accepted connections): True when it shows another process
        publishing as this gateway."""
        inst = doc.get("instance")
        if inst == self.instance:
            self.armed = True
            self.echoes += not retained
            return False
        if retained:
            if not self.armed:
                return False
            if len(self.retained_at) < 2:        # (bounded: two connections are the evidence)
                self.retained_at.add(connection)
            evidence = len(self.retained_at) >= 2
        else:
            evidence = doc.get("online") is True
        if evidence:
            self.other = (str(inst) if inst is not None else "?", str(doc.get("host") or "?"))
            self.conflicts += 1
        return evidence
