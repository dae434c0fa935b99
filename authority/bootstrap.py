"""A district's authority set up in one call: the authority key, a roster, and a key for each person or
console, for the demo, the simulated district and tests. Production does the same steps one by one with
`gasguard device authority-init` and `gasguard authority ...` (docs/OPERATORS.md), each person creating
their own key on their own machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import roster as RO
from .secretfile import load_private_key, new_key, save_private_key


@dataclass
class District:
    dir: Path
    district: str
    authority_key: Path                     # the authority's private key (encrypted when a passphrase is given)
    trust: Path                             # its public key (.pub.pem): what gateways are configured with
    roster: Path
    keys: dict[str, Path] = field(default_factory=dict)   # person or console id -> private key file
    passphrase: bytes | None = None

    def key(self, pid: str) -> Ed25519PrivateKey:
        return load_private_key(self.keys[pid], self.passphrase)

    def authority(self) -> Ed25519PrivateKey:
        return load_private_key(self.authority_key, self.passphrase)

    def gateway_toml(self) -> str:
        """The [authority] table of a gateway of this district."""
        return f'[authority]\nroster = "{self.roster}"\ntrust = "{self.trust}"\n'


def bootstrap(directory: str | Path, district: str, people: dict[str, str], *,
              passphrase: bytes | None = None) -> District:
    """`people`: id -> role (operator, engineer, admin, console). The first admin (or the authority, if none)
    approves everyone else, as a real roster's history would show."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    auth = Ed25519PrivateKey.generate()
    akey = save_private_key(d / "authority.pem", auth, passphrase)
    trust = d / "authority.pub.pem"
    trust.write_bytes(auth.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    out = District(dir=d, district=district, authority_key=akey, trust=trust, roster=d / "operators.json",
                   passphrase=passphrase)
    RO.init(out.roster, auth, district, force=True)
    admins = [p for p, r in people.items() if r == "admin"]
    order = admins[:1] + [p for p in people if p not in admins[:1]]
    approver = None
    for pid in order:
        out.keys[pid] = d / f"{pid}.key"
        pub = new_key(out.keys[pid], passphrase, force=True)
        RO.add(out.roster, auth, pid, people[pid], pub, approver=approver)
        if approver is None and people[pid] == "admin":
            approver = (pid, load_private_key(out.keys[pid], passphrase))
    return out
