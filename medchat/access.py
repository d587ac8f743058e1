"""Who may do what: sign-in, and the reviewer behind each request.

    access = Access.from_settings(settings)
    demo.launch(auth=access.gradio_auth(), ...)      # None unless MEDCHAT_AUTH is set
    name = access.require(request, profile, "vote")  # the reviewer, or a MedchatError

Three modes:
- "off" (the default): no sign-in. Everyone may chat, vote, rate, export and start runs, as a
  single-user app on one's own machine expects. A vote or rating is saved under the name the
  person types, else under an anonymous id of their browser session ("anon-" and 10 hex
  digits), so two anonymous reviewers never overwrite each other.
- "password": MEDCHAT_AUTH holds users and passwords ("alice:pw1,bob:pw2", or the path of a
  file with one "user:password" a line). Gradio's login page guards the whole app and every
  endpoint: a call without a signed-in session gets HTTP 401. The reviewer is the username.
- "oauth": on a Hugging Face Space whose README front matter has `hf_oauth: true` (the Space
  then sets OAUTH_CLIENT_ID). Chat stays open to everyone; voting, rating, exporting and
  starting evaluation runs need a "Sign in with Hugging Face" session, checked in each
  handler, so the API refuses them without one. The reviewer is the Hugging Face username.

Organisers (MEDCHAT_ORGANISERS) alone see the study summary and export the data; by default
the Space's owner, or the first MEDCHAT_AUTH user. With sign-in off everyone is an organiser.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medchat.errors import MedchatError

ANONYMOUS_PREFIX = "anon-"
MODES = ("off", "password", "oauth")


@dataclass(frozen=True)
class Access:
    mode: str = "off"
    users: Mapping[str, str] = field(default_factory=dict, repr=False)  # name -> password
    organisers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MedchatError(f"Sign-in mode {self.mode!r} is unknown; use one of {MODES}.")
        if self.mode == "password" and not self.users:
            raise MedchatError("Password sign-in needs at least one user in MEDCHAT_AUTH.")

    @classmethod
    def from_settings(cls, settings, env: Mapping[str, str] | None = None) -> Access:
        """The mode from MEDCHAT_AUTH (password) or the Space's OAuth variables (oauth)."""
        env = os.environ if env is None else env
        organisers = frozenset(n.strip() for n in settings.organisers.split(",") if n.strip())
        if settings.auth.strip():
            users = parse_users(settings.auth)
            return cls("password", users, organisers or frozenset([next(iter(users))]))
        if env.get("SPACE_ID") and env.get("OAUTH_CLIENT_ID"):
            owner = env.get("SPACE_AUTHOR_NAME", "").strip()
            return cls("oauth", {}, organisers or frozenset([owner] if owner else []))
        return cls("off", {}, organisers)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def gradio_auth(self):
        """The `auth` for Gradio's launch(): a checker of (username, password), or None."""
        if self.mode != "password":
            return None
        users = dict(self.users)

        def check(username: str, password: str) -> bool:
            expected = users.get((username or "").strip())
            # Compare digests in constant time, so timing does not tell how much matched.
            return expected is not None and hmac.compare_digest(
                hashlib.sha256(password.encode()).digest(),
                hashlib.sha256(expected.encode()).digest(),
            )

        return check

    def signed_in(self, request: Any = None, profile: Any = None) -> str | None:
        """The signed-in username behind a request, or None."""
        if self.mode == "password":
            name = getattr(request, "username", None)
            return name if name in self.users else None
        if self.mode == "oauth" and profile is not None:
            name = getattr(profile, "username", None)
            if not name and isinstance(profile, Mapping):
                name = profile.get("preferred_username")
            return str(name) if name else None
        return None

    def reviewer(self, request: Any = None, profile: Any = None, typed: str | None = "") -> str:
        """Who a vote, rating or thumb is saved under; "" only when sign-in is on and nobody is
        signed in (`require` refuses that case)."""
        if self.enabled:
            return self.signed_in(request, profile) or ""
        typed = (typed or "").strip()
        if typed:
            return typed
        return anonymous_id(getattr(request, "session_hash", None))

    def require(self, request: Any, profile: Any, action: str, typed: str | None = "") -> str:
        """The reviewer for `action` ("vote", "rate answers", ...), or a MedchatError saying
        to sign in."""
        name = self.reviewer(request, profile, typed)
        if not name:
            how = (
                "with the Sign in with Hugging Face button at the top"
                if self.mode == "oauth"
                else "on the login page"
            )
            raise MedchatError(f"Sign in to {action}: {how}.")
        return name

    def require_organiser(self, request: Any, profile: Any, action: str) -> str:
        """The organiser's name for `action`, or a MedchatError."""
        if not self.enabled:
            typed = anonymous_id(getattr(request, "session_hash", None))
            return next(iter(sorted(self.organisers)), typed)
        name = self.require(request, profile, action)
        if name not in self.organisers:
            raise MedchatError(
                f"Only the study's organisers may {action}; ask them to add {name!r} to "
                "MEDCHAT_ORGANISERS."
            )
        return name

    def is_organiser(self, request: Any = None, profile: Any = None) -> bool:
        if not self.enabled:
            return True
        return self.signed_in(request, profile) in self.organisers


def anonymous_id(session_hash: str | None) -> str:
    """A stable pseudonym for one browser session; a fresh random one without a session."""
    seed = session_hash or os.urandom(16).hex()
    return ANONYMOUS_PREFIX + hashlib.sha256(seed.encode()).hexdigest()[:10]


def parse_users(spec: str) -> dict[str, str]:
    """{user: password} from "alice:pw1,bob:pw2" or from a file of "user:password" lines.

    A file may have blank lines and "#" comments. Bad entries are a MedchatError that never
    repeats a password.
    """
    spec = spec.strip()
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise MedchatError(f"Cannot read MEDCHAT_AUTH file {path} ({err}).") from err
        entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        where = f"the MEDCHAT_AUTH file {path}"
    else:
        if "/" in spec and ":" not in spec:
            raise MedchatError(f"MEDCHAT_AUTH names a file {spec!r} that does not exist.")
        entries = [e.strip() for e in spec.split(",") if e.strip()]
        where = "MEDCHAT_AUTH"
    users: dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        name, sep, password = entry.partition(":")
        name = name.strip()
        if not sep or not name or not password:
            raise MedchatError(
                f"Entry {number} of {where} is not user:password (a name, a colon, a password)."
            )
        if name in users:
            raise MedchatError(f"User {name!r} appears twice in {where}.")
        users[name] = password
    if not users:
        raise MedchatError(f"{where} lists no users; give user:password entries.")
    return users
