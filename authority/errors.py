"""The failures of the authority library, with the exit code each maps to (0 ok, 1 operational, 2 bad input).

`Refused` is not an error of the caller's program: it is the answer to a request that must not act. Its
`reason` is a short code that is counted, answered on the result topic and written to the audit record.
"""


class AuthorityError(Exception):
    """Something failed while doing the work (file system, audit storage): exit code 1."""

    exit_code = 1


class BadInput(AuthorityError):
    """The request itself is wrong (a name, a role, a missing or unreadable key): exit code 2."""

    exit_code = 2


class AuditFull(AuthorityError):
    """Audit storage has reached its capacity (IEC 62443-4-2 CR 2.9): acts that cannot be recorded are
    refused, never done unrecorded."""


class Refused(Exception):
    """A signed request that must not act. `reason` is one of REASONS; the message says why, for people."""

    REASONS = ("unsigned", "malformed", "topic_mismatch", "unknown_signer", "bad_signature", "stale", "future",
               "replayed", "revoked", "wrong_role", "not_a_console", "wrong_district", "no_authority",
               "audit_full")

    def __init__(self, reason: str, message: str, *, operator: str | None = None, signer: str | None = None,
                 action: str | None = None):
        assert reason in self.REASONS, reason
        super().__init__(message)
        self.reason, self.operator, self.signer, self.action = reason, operator, signer, action
