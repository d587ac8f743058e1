"""Sign-in and reviewer identity (medchat.access), and the handlers that enforce them."""

from __future__ import annotations

import gradio as gr
import pytest

from medchat.access import Access, anonymous_id, parse_users
from medchat.errors import MedchatError
from medchat.settings import Settings


def profile(name: str) -> gr.OAuthProfile:
    return gr.OAuthProfile(
        {"preferred_username": name, "name": name.title(), "picture": "", "profile": "", "sub": "1"}
    )


def test_users_from_a_string_and_from_a_file(tmp_path):
    assert parse_users("ana:pw1, bo:p:w2") == {"ana": "pw1", "bo": "p:w2"}
    users = tmp_path / "users.txt"
    users.write_text("# the study's reviewers\nana:secret\n\nbo:other\n", encoding="utf-8")
    assert parse_users(str(users)) == {"ana": "secret", "bo": "other"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ana", "Entry 1 of MEDCHAT_AUTH is not user:password"),
        ("ana:pw,bo:", "Entry 2 of MEDCHAT_AUTH"),
        ("ana:pw,ana:pw2", "appears twice"),
        ("/no/such/users.txt", "does not exist"),
        (" , ", "lists no users"),
    ],
)
def test_bad_user_lists_are_one_sentence_without_the_password(spec, message):
    with pytest.raises(MedchatError, match=message) as err:
        parse_users(spec)
    assert "pw2" not in str(err.value)


def test_password_check_accepts_only_the_right_pair():
    check = Access("password", {"ana": "s3cret"}, frozenset({"ana"})).gradio_auth()
    assert check("ana", "s3cret") is True
    assert check("ana", "s3cre") is False
    assert check("bo", "s3cret") is False
    assert Access().gradio_auth() is None  # sign-in off: no login page


def test_modes_from_settings_and_environment():
    off = Access.from_settings(Settings(), env={})
    assert (off.mode, off.enabled) == ("off", False)
    local = Access.from_settings(Settings(auth="ana:1,bo:2"), env={})
    assert local.mode == "password" and local.organisers == {"ana"}  # the first user
    space = {"SPACE_ID": "ana/medchat", "OAUTH_CLIENT_ID": "x", "SPACE_AUTHOR_NAME": "ana"}
    oauth = Access.from_settings(Settings(), env=space)
    assert oauth.mode == "oauth" and oauth.organisers == {"ana"}  # the Space's owner
    named = Access.from_settings(Settings(organisers="dr-li, ana"), env=space)
    assert named.organisers == {"dr-li", "ana"}
    # A Space without OAuth enabled has no sign-in.
    assert Access.from_settings(Settings(), env={"SPACE_ID": "ana/medchat"}).mode == "off"


def test_anonymous_reviewers_get_an_id_per_session():
    access = Access()
    one = access.reviewer(gr.Request(session_hash="s1"))
    assert one == anonymous_id("s1") and one.startswith("anon-") and len(one) == 15
    assert access.reviewer(gr.Request(session_hash="s1")) == one  # stable in a session
    assert access.reviewer(gr.Request(session_hash="s2")) != one
    assert access.reviewer(gr.Request(session_hash="s1"), typed=" Dr Ana ") == "Dr Ana"
    assert access.require_organiser(gr.Request(session_hash="s1"), None, "export")  # all may


def test_oauth_needs_a_signed_in_profile_and_ignores_typed_names():
    access = Access("oauth", {}, frozenset({"owner"}))
    request = gr.Request(session_hash="s1")
    with pytest.raises(MedchatError, match="Sign in to vote: with the Sign in with Hugging Face"):
        access.require(request, None, "vote", typed="someone else")
    assert access.require(request, profile("dr-li"), "vote", typed="owner") == "dr-li"
    with pytest.raises(MedchatError, match="Only the study's organisers may export"):
        access.require_organiser(request, profile("dr-li"), "export the reviews")
    assert access.require_organiser(request, profile("owner"), "export the reviews") == "owner"


def test_password_mode_trusts_only_listed_usernames():
    access = Access("password", {"ana": "x"}, frozenset({"ana"}))
    assert access.require(gr.Request(username="ana"), None, "rate answers") == "ana"
    with pytest.raises(MedchatError, match="Sign in to rate answers: on the login page"):
        access.require(gr.Request(username=None, session_hash="s"), None, "rate answers")
    with pytest.raises(MedchatError, match="Sign in"):
        access.require(gr.Request(username="mallory"), None, "rate answers")
