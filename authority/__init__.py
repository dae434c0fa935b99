"""Authority and audit (issue 14): who may change the world, proof that they did, and the record of it.

Pieces (each a module):
- `roles`     the roles and what each may do (operator: ack, input, resolve, shelve; engineer: also status,
              reset, set_param, selftest; admin: also manage operators; console: signs only for others);
- `roster`    the operator roster, signed by the district authority key (the key that signs registry
              bundles); admins approve each change with their own signature; serials never go back;
- `envelope`  `sign_request` / `verify_request`: the signed request (operator id, topic, payload hash,
              timestamp, nonce, Ed25519 signature) and its checks (signature, role, revocation, freshness, replay);
- `replay`    the durable nonce store (SQLite, survives restarts);
- `audit`     the hash-chained, fsynced, rotated audit log with the IEC 62443-4-2 CR 2.8 fields, its capacity
              warning (CR 2.9), `verify` and `show`;
- `gate`      the three together where a request acts: `Gate.check(topic, raw, action=..., category=...)`;
- `secretfile` secrets at rest: 0600 files, passphrase-protected PKCS#8 keys, passphrase-sealed blobs;
- `broker`    mosquitto password + ACL files from the roster and the gateways (the second wall).

How a web console signs for a logged-in operator (issues 15 and 16)
-------------------------------------------------------------------
A person at the web console has no key file in the browser. The console is itself a principal in the roster,
role `console`, with its own Ed25519 key (kept by the console server, passphrase-protected like any key) and a
list `relays` of the roles it may speak for (default operator and engineer; never admin unless the authority
says so). After the console has authenticated the person (argon2 password, its own session), it signs each of
their requests with its key and `on_behalf_of=<operator id>`:

    sign_request(console_key, "console-lixia-1", topic, body, on_behalf_of="wang.li",
                 client_id=session_id, address=remote_ip)

The verifier (gateway, command service) then checks both: the console is in the roster, active, of role
`console`, and relays the person's role; the person is in the roster and active, and *their* role permits the
action. Revoking the person stops them at every console at once; revoking the console stops everything it
signs. The audit record names both (`source.operator` and `source.console`, with the client id and address
the console signed). The difference from a personal key (CR 2.12, non-repudiation): the signature proves the
console vouched for the person, not the person's own key; acts where that matters (reset of a node) can be
reserved to personal keys by not listing `engineer` in the console's `relays`.

Everything here is pure or touches only files; it imports nothing from the gateway, so the gateway, the
command service and the CLI all build on it.
"""

from .audit import AuditLog, show, verify
from .envelope import Verified, is_signed, sign_request, verify_request
from .errors import AuditFull, AuthorityError, BadInput, Refused
from .gate import Gate
from .replay import ReplayGuard
from .roles import ROLES, permits
from .roster import Principal, Roster

__all__ = ["AuditLog", "AuditFull", "AuthorityError", "BadInput", "Gate", "Principal", "ROLES", "Refused",
           "ReplayGuard", "Roster", "Verified", "is_signed", "permits", "show", "sign_request", "verify",
           "verify_request"]
