"""`gasguard authority ...` (operators, keys, broker configuration) and `gasguard audit ...` (verify, show).

Thin: parse, call the library, print. Exit 0 ok, 1 operational error (or a chain that does not verify),
2 bad input. `--json` prints one JSON document on stdout. Passphrases come from a file option, the
environment (GASGUARD_AUTHORITY_PASSPHRASE for the authority key, GASGUARD_OPERATOR_PASSPHRASE for an
operator's key), or a prompt; they are never arguments (they would show in `ps`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import click

from . import audit as A
from . import roster as RO
from . import secretfile as S
from .errors import AuthorityError

CONF = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "gasguard"
AUTH_PASS_ENV = "GASGUARD_AUTHORITY_PASSPHRASE"
OP_PASS_ENV = "GASGUARD_OPERATOR_PASSPHRASE"


def _fail(as_json: bool, e: Exception, code: int):
    if as_json:
        click.echo(json.dumps({"ok": False, "error": str(e), "exit": code}))
    click.echo(f"error: {e}", err=True)
    sys.exit(code)


def handled(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except AuthorityError as e:
            _fail(kw.get("as_json", False), e, e.exit_code)
    return wrapper


def _out(as_json: bool, doc, lines) -> None:
    if as_json:
        click.echo(json.dumps(doc, ensure_ascii=False))
    else:
        for line in lines:
            click.echo(line)


def get_passphrase(file, env: str, what: str, *, confirm: bool = False) -> bytes:
    """From --*-passphrase-file, the environment, or a prompt on a terminal; else a clear refusal."""
    secret = S.passphrase(file=file, env=env)
    if secret:
        return secret
    if not sys.stdin.isatty():
        raise S.BadInput(f"the {what} needs a passphrase: set {env} or pass its --passphrase-file option")
    secret = click.prompt(f"passphrase for the {what}", hide_input=True, confirmation_prompt=confirm).encode()
    if confirm and len(secret) < 8:
        raise S.BadInput("a passphrase of at least 8 characters, please")
    return secret


def _load_key(path, pass_file, env, what, hint):
    """A private key; the passphrase is asked for only when the file is encrypted."""
    p = Path(path)
    secret = get_passphrase(pass_file, env, f"{what} {path}") if p.is_file() and S.is_encrypted_key(p) else None
    return S.load_private_key(p, secret, what=what, create_hint=hint)


def load_authority_key(path, pass_file):
    return _load_key(path, pass_file, AUTH_PASS_ENV, "authority key", "create it with 'gasguard device authority-init'")


def load_operator_key(path, pass_file):
    return _load_key(path, pass_file, OP_PASS_ENV, "operator key", "create it with 'gasguard authority key-init'")


roster_opt = click.option("--roster", envvar="GASGUARD_ROSTER", show_default=True, type=click.Path(dir_okay=False),
                          default=str(CONF / "operators.json"), help="the operator roster (env GASGUARD_ROSTER)")
authority_opt = click.option("--authority", envvar="GASGUARD_AUTHORITY", show_default=True,
                             type=click.Path(dir_okay=False), default=str(CONF / "authority.pem"),
                             help="the district authority's key (env GASGUARD_AUTHORITY)")
auth_pass_opt = click.option("--authority-passphrase-file", type=click.Path(dir_okay=False), default=None,
                             help=f"file whose first line is the authority key's passphrase (or env {AUTH_PASS_ENV})")
json_opt = click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout, for scripts")
approver_opts = [
    click.option("--as", "as_admin", default=None, metavar="ADMIN", help="the approving admin's operator id"),
    click.option("--key", "admin_key", type=click.Path(dir_okay=False), default=None,
                 help="the approving admin's own key file"),
    click.option("--passphrase-file", type=click.Path(dir_okay=False), default=None,
                 help=f"first line: the admin key's passphrase (or env {OP_PASS_ENV})"),
]


def _change_opts(f):
    """The options of a roster change: which roster, the authority key, the approving admin, --json."""
    for o in reversed([roster_opt, authority_opt, auth_pass_opt, *approver_opts, json_opt]):
        f = o(f)
    return handled(f)


def _approver(as_admin, admin_key, passphrase_file):
    if as_admin is None:
        return None
    if admin_key is None:
        raise S.BadInput("--as ADMIN needs --key ADMIN.key (the admin's own operator key)")
    return as_admin, load_operator_key(admin_key, passphrase_file)


@click.group()
def authority():
    """District operators: who may acknowledge, report facts and command nodes, with which key.

    \b
    Setting up a district (docs/OPERATORS.md walks through it):
      gasguard device authority-init                      # the district authority key (encrypted)
      gasguard authority init --district lixia            # an empty roster signed by it
      gasguard authority key-init --out wang.key          # on the operator's own machine
      gasguard authority add wang.li --role admin --public-key wang.pub
      gasguard authority add li.na --role engineer --public-key li.pub --as wang.li --key wang.key
      gasguard authority broker-config --gateway lixia/gw-1 --out /etc/mosquitto/gasguard
    """


@authority.command("init")
@roster_opt
@authority_opt
@auth_pass_opt
@click.option("--district", required=True, help="the district (MQTT topic segment), e.g. lixia")
@click.option("--force", is_flag=True, help="replace an existing roster (every operator is then forgotten)")
@json_opt
@handled
def init_(roster, authority, authority_passphrase_file, district, force, as_json):
    """Create an empty operator roster for the district, signed by the authority key."""
    key = load_authority_key(authority, authority_passphrase_file)
    ro = RO.init(roster, key, district, force=force)
    _out(as_json, {"ok": True, "roster": roster, "district": district, "serial": ro.serial},
         [f"roster {roster} for district {district} (serial {ro.serial}); add the first admin with "
          "'gasguard authority add ID --role admin --public-key FILE'"])


@authority.command("key-init")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="where the private key goes (0600)")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), default=None,
              help=f"first line: the passphrase to encrypt it with (or env {OP_PASS_ENV}, or a prompt)")
@click.option("--force", is_flag=True, help="replace an existing key")
@json_opt
@handled
def key_init(out, passphrase_file, force, as_json):
    """Create an operator's (or a console's) Ed25519 key, encrypted under a passphrase; prints the public key
    to hand to the district's admin. Run it on the person's own machine: the private key never travels."""
    secret = S.passphrase(file=passphrase_file, env=OP_PASS_ENV)
    if not secret:
        secret = get_passphrase(None, OP_PASS_ENV, f"new key {out}", confirm=True)
    pub = S.new_key(out, secret, force=force)
    pubfile = Path(out).with_name(Path(out).stem + ".pub")
    _out(as_json, {"ok": True, "key": out, "public_key": pub, "public_file": str(pubfile)},
         [f"private key {out} (0600, encrypted)", f"public key {pubfile}: {pub}",
          "give the public key to your admin: gasguard authority add ID --role ROLE --public-key " + str(pubfile)])


def _read_pub(text: str) -> str:
    p = Path(text)
    if p.is_file():
        text = p.read_text().strip()
    S.public_from_hex(text)
    return text


@authority.command("add")
@click.argument("operator_id")
@click.option("--role", required=True, type=click.Choice(["operator", "engineer", "admin", "console"]),
              help="operator: ack, input, shelve; engineer: also node commands; admin: also manages operators; "
              "console: a web console signing for logged-in operators")
@click.option("--public-key", "public_key", required=True, help="64 hex digits, or the .pub file from key-init")
@click.option("--name", default="", help="the person's name, for the record")
@click.option("--relays", default=None, help="console only: roles it may sign for, comma-separated "
              "(default operator,engineer)")
@_change_opts
def add(operator_id, role, public_key, name, relays, roster, authority, authority_passphrase_file, as_admin,
        admin_key, passphrase_file, as_json):
    """Add an operator (or a console) with a role. The roster's first admin is added with the authority key
    alone; after that every change needs an admin's approval (--as ADMIN --key ADMIN.key)."""
    key = load_authority_key(authority, authority_passphrase_file)
    pr = RO.add(roster, key, operator_id, role, _read_pub(public_key), name=name,
                relays=[r.strip() for r in relays.split(",")] if relays else None,
                approver=_approver(as_admin, admin_key, passphrase_file))
    _out(as_json, {"ok": True, "operator": pr.public()},
         [f"{pr.id} added as {pr.role} (approved by {pr.added_by}); copy {roster} to every gateway "
          "(they take it up within a tick)"])


@authority.command("revoke")
@click.argument("operator_id")
@click.option("--reason", default="", help="why, for the record")
@_change_opts
def revoke(operator_id, reason, roster, authority, authority_passphrase_file, as_admin, admin_key, passphrase_file,
           as_json):
    """Revoke an operator: their signed requests are refused by every gateway that has taken up the roster."""
    key = load_authority_key(authority, authority_passphrase_file)
    pr = RO.revoke(roster, key, operator_id, reason=reason, approver=_approver(as_admin, admin_key, passphrase_file))
    _out(as_json, {"ok": True, "operator": pr.public()},
         [f"{pr.id} revoked by {pr.revoked_by}; copy {roster} to every gateway now"])


@authority.command("list")
@roster_opt
@click.option("--trust", type=click.Path(dir_okay=False), default=None,
              help="the authority's public key (.pub.pem or hex); default: next to --authority")
@authority_opt
@click.option("--all", "show_all", is_flag=True, help="include revoked operators")
@json_opt
@handled
def list_(roster, trust, authority, show_all, as_json):
    """The operators of the roster (verified against the authority's public key)."""
    pub = _trusted(trust, authority)
    ro = RO.load(roster, pub)
    rows = [p for p in sorted(ro.principals.values(), key=lambda p: p.id) if show_all or p.active]
    doc = {"ok": True, "district": ro.district, "serial": ro.serial, "issued_at": ro.issued_at,
           "operators": [p.public() for p in rows]}
    lines = [f"district {ro.district}, roster serial {ro.serial}, issued {time.ctime(ro.issued_at)}"]
    for p in rows:
        state = "active" if p.active else f"REVOKED {time.strftime('%Y-%m-%d', time.localtime(p.revoked_at))}"
        lines.append(f"  {p.id:<20} {p.role:<9} {state:<19} {p.key[:16]}...  {p.name}")
    _out(as_json, doc, lines)


def _trusted(trust, authority):
    return S.load_public(Path(trust) if trust else Path(authority).with_name(Path(authority).stem + ".pub.pem"))


# -- audit -----------------------------------------------------------------------------------------
audit_dir = click.argument("directory", type=click.Path(file_okay=False))


@click.group()
def audit():
    """The audit record: verify its chain, show its records."""


@audit.command("verify")
@audit_dir
@click.option("--head", default=None, metavar="SEQ:HASH", help="a head published earlier (the gateway's stats): "
              "records cut off after it are found too")
@click.option("--allow-archived", is_flag=True, help="the oldest segments were archived: start at the first here")
@json_opt
@handled
def verify(directory, head, allow_archived, as_json):
    """Check the hash chain: finds edited, removed, inserted and reordered records. Exit 1 if any."""
    rep = A.verify(directory, allow_archived=allow_archived, head=head)
    lines = [f"{rep['records']} records in {len(rep['segments'])} segments; head seq {rep['head']['seq']} "
             f"{(rep['head']['hash'] or '')[:16]}..."]
    lines += [f"  {p['problem'].upper():<12} {p['segment']}:{p['line']} seq {p['seq']}: {p['detail']}"
              for p in rep["problems"]]
    lines.append("chain intact" if rep["ok"] else f"{len(rep['problems'])} problem(s): the record was tampered with "
                 "or damaged; keep this copy as evidence")
    _out(as_json, rep, lines)
    sys.exit(0 if rep["ok"] else 1)


@audit.command("show")
@audit_dir
@click.option("--since", default=None, help="epoch seconds or ISO 8601 (UTC if no zone)")
@click.option("--until", default=None, help="epoch seconds or ISO 8601")
@click.option("--operator", default=None, help="records by (or claimed by, or via the console) this operator")
@click.option("--category", type=click.Choice(A.CATEGORIES), default=None)
@click.option("--type", "type_", default=None, help="e.g. reset, ack, input, operators_changed")
@click.option("--outcome", type=click.Choice(A.OUTCOMES), default=None)
@click.option("--limit", type=int, default=None, help="only the last N matching records")
@json_opt
@handled
def show(directory, since, until, operator, category, type_, outcome, limit, as_json):
    """Records matching the filters, oldest first."""
    if not Path(directory).is_dir():
        raise S.BadInput(f"{directory}: no audit directory here (the gateway's [authority] audit_dir)")
    recs = A.show(directory, since=since, until=until, operator=operator, category=category, type=type_,
                  outcome=outcome, limit=limit)
    _out(as_json, recs, [A.summary_line(r) for r in recs] or ["no matching records"])


@authority.command("broker-config")
@click.option("--gateway", "gateways", multiple=True, required=True, metavar="ID",
              help="a gateway of the district ([gateway] id), repeat for each")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for passwd, acl, gasguard.conf")
@click.option("--city-topic", default="city", show_default=True, help="the city command's topic segment")
@roster_opt
@click.option("--trust", type=click.Path(dir_okay=False), default=None,
              help="the authority's public key (.pub.pem or hex); default: next to --authority")
@authority_opt
@json_opt
@handled
def broker_config(gateways, out, city_topic, roster, trust, authority, as_json):
    """Write the mosquitto password and ACL files from the roster and the gateways: no anonymous access; a
    gateway writes only under its own prefix and reads only its own commands; people act only in their
    district, node commands only for engineers. Include OUT/gasguard.conf from mosquitto.conf, hand each
    OUT/credentials/USER.password to its user, and reload mosquitto (SIGHUP) after every roster change."""
    from . import broker
    ro = RO.load(roster, _trusted(trust, authority))
    rep = broker.write_config(ro, list(gateways), out, city_topic=city_topic)
    _out(as_json, dict(rep, ok=True),
         [f"{len(rep['users'])} users ({', '.join(rep['users'])}) for district {ro.district}, roster serial {ro.serial}",
          f"include {rep['conf']} from mosquitto.conf, then: systemctl reload mosquitto",
          *(f"new credentials: {out}/credentials/{u}.password (hand it over, then delete your copy)"
            for u in rep["new_credentials"])])
