"""Dashboard users: roles, the part of the country each may see, and password checks.

Roles follow the administration: ``national`` sees everything, ``province`` one province
(two-digit BPS code, e.g. ``31``), ``regency`` one regency (four digits, ``3171``). The scope
is applied in SQL on the server for every page and export, never only hidden in the page.
``show_ids`` is a separate grant (for the officers who make home visits): without it household
ids are masked with :func:`edge.privacy.mask_id` and names are not shown at all.

Passwords are hashed with argon2id by ``argon2-cffi`` (its defaults, RFC 9106's low-memory
profile); nothing here hashes by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from edge.central.store import CentralStore
from edge.errors import CentralError
from edge.privacy import mask_id

ROLES = ("national", "province", "regency")
_SCOPE = {"province": re.compile(r"^[0-9]{2}$"), "regency": re.compile(r"^[0-9]{4}$")}
_hasher = PasswordHasher()
# Verified when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY = _hasher.hash("not a password")


@dataclass(frozen=True)
class User:
    """A logged-in user and what they may see."""

    username: str
    role: str
    scope: str | None = None
    show_ids: bool = False

    def sees_regency(self, regency: str | None) -> bool:
        """May this user see the data of ``regency``?"""
        if self.role == "national":
            return True
        if not regency:
            return False
        if self.role == "province":
            return regency[:2] == self.scope
        return regency == self.scope

    def where(self, alias: str = "") -> tuple[str, tuple]:
        """SQL condition (and parameters) confining a query on a table with ``province`` and
        ``regency`` columns to this user's part of the country."""
        col = f"{alias}." if alias else ""
        if self.role == "national":
            return "1 = 1", ()
        if self.role == "province":
            return f"{col}province = ?", (self.scope,)
        return f"{col}regency = ?", (self.scope,)

    def household(self, household_id: str | None) -> str:
        """A household id as this user may see it."""
        if not household_id:
            return "-"
        return household_id if self.show_ids else mask_id(household_id)


def check_role(role: str, scope: str | None) -> None:
    """Raise CentralError unless ``scope`` fits ``role``."""
    if role not in ROLES:
        raise CentralError(f"role must be one of {', '.join(ROLES)}")
    if role == "national":
        if scope:
            raise CentralError("a national user has no scope")
        return
    if not scope or not _SCOPE[role].match(scope):
        raise CentralError(f"a {role} user needs a {'2' if role == 'province' else '4'}-digit code")


def add_user(
    store: CentralStore,
    username: str,
    password: str,
    role: str,
    scope: str | None = None,
    show_ids: bool = False,
) -> User:
    """Create or replace a dashboard user."""
    check_role(role, scope)
    if not re.match(r"^[A-Za-z0-9._-]{1,64}$", username):
        raise CentralError("username: 1-64 letters, digits, '.', '_' or '-'")
    if len(password) < 8:
        raise CentralError("password: at least 8 characters")
    store.execute(
        "INSERT INTO c_users VALUES (?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
        "password_hash = excluded.password_hash, role = excluded.role, "
        "scope = excluded.scope, show_ids = excluded.show_ids",
        (username, _hasher.hash(password), role, scope, int(show_ids)),
    )
    return User(username, role, scope, show_ids)


def get_user(store: CentralStore, username: str) -> User | None:
    """The user of that name, or None."""
    rows = store.rows(
        "SELECT username, role, scope, show_ids FROM c_users WHERE username = ?", (username,)
    )
    if not rows:
        return None
    name, role, scope, show_ids = rows[0]
    return User(name, role, scope, bool(show_ids))


def authenticate(store: CentralStore, username: str, password: str) -> User | None:
    """The user when the password is right, else None."""
    rows = store.rows("SELECT password_hash FROM c_users WHERE username = ?", (username,))
    stored = rows[0][0] if rows else _DUMMY
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if not rows:
        return None
    if _hasher.check_needs_rehash(stored):
        store.execute(
            "UPDATE c_users SET password_hash = ? WHERE username = ?",
            (_hasher.hash(password), username),
        )
    return get_user(store, username)
