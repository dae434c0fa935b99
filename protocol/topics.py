# The MQTT topic tree of GasGuard (gateway/README.md "Topics"), built in one place from the configured root.
#
#   <root>/<district>/<gateway>/{status,stats,event,reading}           a gateway's own messages
#   <root>/<district>/<gateway>/drill/clock                            a drill's virtual clock (gateway/clock.py)
#   <root>/<district>/<gateway>/<dev>/{state,alarm,event,cmd,cmd/result} one device behind it (dev: 8 hex)
#   <root>/<district>/command/incident/<id>                            incidents for the district command
#   <root>/<district>/command/{ack,input}/<id>, .../command/sync         the district command's answers
#   <root>/<district>/command/shelve/<id>                              a shelving act (signed for this topic; issue 16)
#   <root>/<district>/command/shelves                                  the command service's shelves now (retained)
#   <root>/<district>/command/gateway/<gateway>                        a gateway as the command sees it
#   <root>/<district>/command/result/<gateway>                         a gateway's answer to each ack/input
#                                                                      (allowed, or refused and why: issue 14)
#   <root>/<city>/incident/<id>                                          incidents the city leads (plan 1.7)
#
# <root> is "gasguard/v1" unless configured (the version is part of it: a v2 tree can run beside v1).
# Plain str building: the module runs unchanged on MicroPython, like the rest of protocol/.

ROOT = "gasguard/v1"

# leaves under a device
STATE = "state"
ALARM = "alarm"
EVENT = "event"
CMD = "cmd"
CMD_RESULT = "cmd/result"

# leaves under a gateway
STATUS = "status"
STATS = "stats"
READING = "reading"
DRILL_CLOCK = "drill/clock"

# the district command's subtree
COMMAND = "command"
INCIDENT = "incident"
ACK = "ack"
INPUT = "input"
SHELVE = "shelve"            # <root>/<district>/command/shelve/<id>: a shelving act, signed for this topic (issue 16)
SHELVES = "shelves"          # <root>/<district>/command/shelves: every shelf the command service holds (retained)
SYNC = "sync"
GATEWAY = "gateway"          # <root>/<district>/command/gateway/<id>: a gateway's state as the command sees it
RESULT = "result"            # <root>/<district>/command/result/<gateway>: answers to acks and operator input


def dev_hex(dev):
    """A device id as it stands in topics and payloads: 8 lower-case hex digits."""
    return "%08x" % dev


class GatewayTopics:
    """One gateway's subtree, <root>/<district>/<gateway>."""

    def __init__(self, base):
        self.root = base                       # "<root>/<district>/<gateway>"
        self.status = base + "/" + STATUS
        self.stats = base + "/" + STATS
        self.event = base + "/" + EVENT
        self.reading = base + "/" + READING
        self.cmd_sub = base + "/+/" + CMD       # every device's command requests
        self.drill_clock = base + "/" + DRILL_CLOCK   # moves a drill's virtual clock (gateway/clock.py)

    def device(self, dev, leaf):
        return self.root + "/" + dev_hex(dev) + "/" + leaf

    def devices(self, leaf):
        """A filter for one leaf of every device behind this gateway."""
        return self.root + "/+/" + leaf

    def dev_of_cmd(self, topic):
        """The device a command request topic names, or None when the topic is not one."""
        if not topic.startswith(self.root + "/"):
            return None
        parts = topic[len(self.root) + 1:].split("/")
        if len(parts) != 2 or parts[1] != CMD or len(parts[0]) != 8:
            return None
        try:
            return int(parts[0], 16)
        except ValueError:
            return None


class CommandTopics:
    """A district command's subtree, <root>/<district>/command."""

    def __init__(self, base):
        self.base = base                       # "<root>/<district>/command"
        self.incidents = base + "/" + INCIDENT + "/+"
        self.gateways = base + "/" + GATEWAY + "/+"     # the command service's view of each gateway
        self.sync = base + "/" + SYNC
        self.results = base + "/" + RESULT + "/+"      # every gateway's answers to acks and operator input
        # what an incident engine listens to: the command's acknowledgements, inputs and sync requests
        self.subscriptions = [base + "/" + ACK + "/+", base + "/" + INPUT + "/+", self.sync]
        # shelving acts: only the district command service takes them (it holds the shelves; a gateway's
        # grading plugin does not), and it publishes what it holds on `shelves` (retained)
        self.shelve_acts = base + "/" + SHELVE + "/+"
        self.shelves = base + "/" + SHELVES

    def incident(self, incident_id):
        return self.base + "/" + INCIDENT + "/" + incident_id

    def ack(self, incident_id):
        return self.base + "/" + ACK + "/" + incident_id

    def input(self, incident_id):
        return self.base + "/" + INPUT + "/" + incident_id

    def shelve(self, incident_id):
        """A shelving act: to the command service on this topic or through its store (the web console)."""
        return self.base + "/" + SHELVE + "/" + incident_id

    def gateway(self, gateway_id):
        return self.base + "/" + GATEWAY + "/" + gateway_id

    def result(self, gateway_id):
        return self.base + "/" + RESULT + "/" + gateway_id

    def parse(self, topic):
        """(kind, incident_id) for a message to the command's subtree: kind is "ack", "input", "shelve" or
        "sync" (incident_id None); None when the topic is not one of them."""
        if not topic.startswith(self.base + "/"):
            return None
        parts = topic[len(self.base) + 1:].split("/")
        if parts == [SYNC]:
            return SYNC, None
        if len(parts) == 2 and parts[0] in (ACK, INPUT, SHELVE) and parts[1]:
            return parts[0], parts[1]
        return None


class Topics:
    """Every topic of the system from the configured root (ROOT unless configured)."""

    def __init__(self, root=ROOT):
        root = root.rstrip("/")
        if not root or "+" in root or "#" in root:
            raise ValueError("topic root must be a concrete topic such as 'gasguard/v1', got %r" % root)
        self.root = root

    def gateway(self, district, gateway_id):
        return GatewayTopics(self.root + "/" + district + "/" + gateway_id)

    def command(self, district):
        return CommandTopics(self.root + "/" + district + "/" + COMMAND)

    def city_incident(self, city, incident_id):
        return self.root + "/" + city + "/" + INCIDENT + "/" + incident_id

    def city_incidents(self, city):
        return self.root + "/" + city + "/" + INCIDENT + "/+"

    def all_results(self):
        """Every district's answers to acks and operator input (a city console acts for several)."""
        return self.root + "/+/" + COMMAND + "/" + RESULT + "/+"

    def district_gateways(self, district, leaf):
        """A filter for one device leaf behind every gateway of a district (e.g. the command's shared
        subscription to alarms: "$share/<group>/" + this)."""
        return self.root + "/" + district + "/+/+/" + leaf

    def district_gateway_leaf(self, district, leaf):
        """A filter for one of the gateways' own leaves (status, stats, reading) across a district."""
        return self.root + "/" + district + "/+/" + leaf

    def everything(self):
        return self.root + "/#"
