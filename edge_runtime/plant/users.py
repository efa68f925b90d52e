"""Who may use the station's OPC UA server: user names with PBKDF2-SHA256 password hashes (a
users file of ``name:hash`` lines, made with ``sortline plant passwd``), and what each kind of
session may do: anonymous sessions (only where the station file allows them) browse, read and
subscribe; users may also call methods (Halt, Reset, SelectModeAutomatic, GetResultById);
nobody changes the address space."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path

from asyncua import ua
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole

log = logging.getLogger(__name__)
ITERATIONS = 200_000
MAX_USERS_FILE = 1 << 20
MAX_PASSWORD = 1024

READ_ONLY = {ua.NodeId(t) for t in USER_TYPES} - {
    ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary),
    ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary),
    ua.NodeId(ua.ObjectIds.HistoryReadRequest_Encoding_DefaultBinary),
}

CALL = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def check_password(password: str, hashed: str) -> bool:
    try:
        scheme, iterations, salt, digest = hashed.split("$")
        if scheme != "pbkdf2_sha256" or not 1000 <= int(iterations) <= 10_000_000:
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def read_users(path: Path) -> dict[str, str]:
    """``name:hash`` lines (``#`` comments); a malformed line is an error that names it."""
    if path.stat().st_size > MAX_USERS_FILE:
        raise ValueError(f"{path}: larger than {MAX_USERS_FILE} bytes")
    users = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, hashed = line.partition(":")
        if not name or not hashed.startswith("pbkdf2_sha256$") or hashed.count("$") != 3:
            raise ValueError(f"{path}:{number}: not 'name:pbkdf2_sha256$…' (make one with `sortline plant passwd`)")
        users[name] = hashed
    return users


class StationUsers:
    """asyncua's user manager: a known name with its password is a User; no credentials is
    Anonymous when allowed; anything else is refused (and counted)."""

    def __init__(self, users: dict[str, str], allow_anonymous: bool) -> None:
        self.users, self.allow_anonymous = users, allow_anonymous
        self.refused = 0

    def get_user(self, iserver, username=None, password=None, certificate=None) -> User | None:
        if username is None and password is None:
            if self.allow_anonymous:
                return User(role=UserRole.Anonymous)
            return self._refuse("an anonymous session")
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        hashed = self.users.get(username or "")
        if hashed is None or not isinstance(password, str) or len(password) > MAX_PASSWORD \
                or not check_password(password, hashed):
            return self._refuse(f"user {str(username)[:60]!r}")
        return User(role=UserRole.User, name=username)

    def _refuse(self, who: str) -> None:
        self.refused += 1
        if self.refused <= 10 or self.refused % 100 == 0:
            log.warning("OPC UA: %s refused (%d so far)", who, self.refused)
        return None


class StationRules(PermissionRuleset):
    """Anonymous sessions read; users read and call methods; nobody administers."""

    def check_validity(self, user, action_type_id, body) -> bool:
        if user is None:
            return False
        if user.role == UserRole.User:
            return action_type_id in READ_ONLY or action_type_id == CALL
        return user.role == UserRole.Anonymous and action_type_id in READ_ONLY
