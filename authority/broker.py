"""The broker as the second wall (issue 14, 3): a mosquitto password file and ACL file from the operator
roster and the district's gateways, so that even a stolen network position gets nothing without a login,
and a login gets only what its role needs. The gateway's signature checks (first wall) stay: the broker
cannot see who signed a request.

Users and what each may do (mosquitto's ACL: `topic read|write PATTERN`, everything else denied):
- gateway `gw-<gateway id>`: write under its own prefix `gasguard/v1/<d>/<gw>/#` (status, readings,
  alarms, state, command results); read only its own status (another process publishing as it:
  gateway/identity.py), its own command topics `<prefix>/+/cmd` and the district's
  requests to it (`command/ack/+`, `command/input/+`, `command/sync`); write the district's incident and
  result topics and the city's incident topic (its grading plugin publishes them, plan 4.1);
- every active person in the roster (user = operator id): read the district `gasguard/v1/<d>/#`;
  write acknowledgements, operator input, shelving (`command/shelve/+`, taken by the command service only)
  and sync requests of that district only;
- engineers and admins: also write node commands `gasguard/v1/<d>/+/+/cmd`;
- consoles: a person's rights for the roles they relay.
Revoked principals get no user. `allow_anonymous false` is in the generated configuration, and
`set_tcp_nodelay true` (PUBACKs leave at once instead of waiting out Nagle: the alarms' latency).

Passwords: generated once per user (secrets.token_urlsafe), kept in `<out>/credentials/<user>.password`
(0600) to hand over, and reused on every later run; the password file holds only PBKDF2-SHA512 hashes in
mosquitto 2's `$7$` format (what `mosquitto_passwd` writes).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from pathlib import Path

from . import roles as R
from .errors import BadInput
from .roster import Roster
from .secretfile import write_secret

PBKDF2_ITERATIONS = 10_000     # mosquitto_passwd's default is 101; the broker reads the count from each line
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# mosquitto >= 1.5; p50 of a PUBACK in a burst at 50,000 readings/s 16-17 ms with Nagle, 0.4-0.5 ms without (sixth
# pass). Written into the district's gasguard.conf, and the broker of `gasguard bench alarms --broker district`
PUBACK_AT_ONCE = ("# PUBACKs at once: without this the later PUBACKs of a burst, an alarm's too, wait for the\n"
                  "# client's delayed TCP ACK (Nagle; GasGuard BENCHMARKS.md, sixth pass)\n"
                  "set_tcp_nodelay true")


def password_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """mosquitto 2's `$7$<iterations>$<b64 salt>$<b64 sha512-pbkdf2>` (mosquitto_passwd -H sha512-pbkdf2)."""
    salt = salt or os.urandom(12)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def gateway_user(gateway_id: str) -> str:
    return f"gw-{gateway_id}"


def acl_for(ro: Roster, gateways: list[str], city_topic: str = "city") -> dict[str, list[str]]:
    """user -> ACL lines. Pure."""
    d = ro.district
    base = f"gasguard/v1/{d}"
    cmd = f"{base}/command"
    people_rw = [f"topic read {base}/#", f"topic write {cmd}/ack/+", f"topic write {cmd}/input/+",
                 f"topic write {cmd}/shelve/+", f"topic write {cmd}/sync"]
    node_cmds = [f"topic write {base}/+/+/cmd"]
    out: dict[str, list[str]] = {}
    for gw in gateways:
        if not NAME_RE.match(gw):
            raise BadInput(f"gateway id {gw!r}: 1-64 of A-Z a-z 0-9 _ - (as in the gateway's [gateway] id)")
        root = f"{base}/{gw}"
        out[gateway_user(gw)] = [
            f"topic write {root}/#", f"topic read {root}/+/cmd", f"topic read {root}/status",
            f"topic read {cmd}/ack/+", f"topic read {cmd}/input/+", f"topic read {cmd}/sync",
            f"topic write {cmd}/incident/+", f"topic write {cmd}/result/+",
            f"topic write gasguard/v1/{city_topic}/incident/+"]
    for p in sorted(ro.principals.values(), key=lambda p: p.id):
        if not p.active:
            continue
        if p.id in out:
            raise BadInput(f"operator id {p.id} collides with a gateway user: rename one")
        roles = p.relays if p.role == "console" else [p.role]
        lines = list(people_rw)
        if any(R.permits(r, "reset") for r in roles):
            lines += node_cmds
        out[p.id] = lines
    return out


def write_config(ro: Roster, gateways: list[str], out_dir: str | Path, *, city_topic: str = "city") -> dict:
    """Write `passwd`, `acl`, `gasguard.conf` (include it from mosquitto.conf) and per-user credentials.
    Returns a summary (no passwords)."""
    out = Path(out_dir)
    creds = out / "credentials"
    creds.mkdir(parents=True, exist_ok=True)
    os.chmod(creds, 0o700)
    acl = acl_for(ro, gateways, city_topic)
    pw_lines, acl_lines, new = [], [f"# generated by gasguard authority broker-config from roster serial {ro.serial}",
                                    "# anything not granted here is denied"], []
    for user, lines in acl.items():
        cf = creds / f"{user}.password"
        if cf.exists():
            password = cf.read_text().strip()
        else:
            password = secrets.token_urlsafe(24)
            write_secret(cf, (password + "\n").encode())
            new.append(user)
        pw_lines.append(f"{user}:{password_hash(password)}")
        acl_lines += ["", f"user {user}"] + lines
    # users no longer in the roster keep no credentials file to hand out by mistake
    for cf in creds.glob("*.password"):
        if cf.stem not in acl:
            cf.unlink()
    write_secret(out / "passwd", ("\n".join(pw_lines) + "\n").encode())
    write_secret(out / "acl", ("\n".join(acl_lines) + "\n").encode())
    conf = out / "gasguard.conf"
    conf.write_text(f"# GasGuard district {ro.district}: no anonymous access; logins and topics from the roster\n"
                    f"allow_anonymous false\npassword_file {out.resolve() / 'passwd'}\n"
                    f"acl_file {out.resolve() / 'acl'}\n"
                    "# refused logins on the broker's own record (log_dest as configured); a denied publication is\n"
                    "# answered 0x87 (MQTT 5) and counted nowhere else: the gateway's audit log records what reaches it\n"
                    "connection_messages true\nlog_type notice\n"
                    f"{PUBACK_AT_ONCE}\n")
    return {"out": str(out), "users": sorted(acl), "new_credentials": new, "serial": ro.serial,
            "conf": str(conf)}
