"""`python app.py` as a Space with Hugging Face OAuth (`hf_oauth: true` sets OAUTH_CLIENT_ID and
friends): chat and compare are open to everyone; voting, rating, the review queue, the study
summary, the export and evaluation runs refuse a caller who has not signed in, through the API
as on the page. The sign-in round trip itself needs huggingface.co (see README)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import wait_until_up
from test_app_process import ADAPTER, START_S, app_env, free_port

from medchat.settings import REPO_ROOT

pytestmark = [pytest.mark.embedded]


@pytest.fixture(scope="module")
def oauth_space(tmp_path_factory, cache_dir):
    pytest.importorskip("authlib", reason="gradio[oauth] (authlib) is in requirements.txt")
    if not ADAPTER.is_dir():
        pytest.skip("the shipped adapter assets/adapters/smollm2-135m-medquad is missing")
    root = tmp_path_factory.mktemp("oauth-space")
    port = free_port()
    env = app_env(
        root,
        MEDCHAT_CACHE_DIR=str(cache_dir),
        MEDCHAT_HOST="127.0.0.1",
        MEDCHAT_PORT=str(port),
        MEDCHAT_RETRIEVAL="off",
        SYSTEM="spaces",  # what a Space sets; Gradio reads it to use the real OAuth routes
        SPACE_ID="owner/medchat",
        SPACE_AUTHOR_NAME="owner",
        OAUTH_CLIENT_ID="medchat-test-client",
        OAUTH_CLIENT_SECRET="medchat-test-secret",
        OAUTH_SCOPES="openid profile",
        OPENID_PROVIDER_URL="http://127.0.0.1:9",  # never reached: nobody signs in here
    )
    err = root / "stderr.txt"
    with err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=stderr, stderr=stderr
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(process, url, err, START_S)
        yield url, root
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@pytest.mark.slow  # heavy: CI runs it (make test-slow)
def test_the_page_offers_hugging_face_sign_in(oauth_space):
    url, _ = oauth_space
    with urllib.request.urlopen(f"{url}config", timeout=10) as response:
        config = json.load(response)
    labels = [str(c.get("props", {}).get("value")) for c in config["components"]]
    assert any("Sign in with Hugging Face" in label for label in labels)
    # The login route is the real one (not Gradio's local mock, which needs a token).
    request = urllib.request.Request(f"{url}login/huggingface", method="HEAD")
    with pytest.raises(urllib.error.URLError):  # redirects to the unreachable provider
        urllib.request.urlopen(request, timeout=10)


@pytest.mark.slow  # heavy: CI runs it (make test-slow)
def test_chat_is_open_and_review_actions_need_a_sign_in(oauth_space):
    from gradio_client import Client

    url, root = oauth_space
    client = Client(url, verbose=False)
    answer = client.predict("What is gout?", 0.0, 0.9, 16, True, api_name="/chat")
    assert str(answer).strip()
    a, b, *_ = client.submit("What is gout?", 0.0, 0.9, 8, True, api_name="/compare").result()
    assert a.strip() and b.strip()
    for api, args in [
        ("/vote", ("tie", "someone")),
        ("/review_next", ("someone", "Everything")),
        ("/rate", (3, "", "someone", "Everything")),
        ("/review_skip", ("someone", "Everything")),
        ("/review_summary", ()),
        ("/review_export", ()),
        ("/eval_start", (2, 16)),
    ]:
        with pytest.raises(Exception, match="Sign in to") as err:
            client.predict(*args, api_name=api)
        assert "Sign in with Hugging Face" in str(err.value), api
    assert not (root / "data" / "reviews.sqlite").exists() or _no_rows(root)


def _no_rows(root) -> bool:
    from medchat.reviews import ReviewStore

    with ReviewStore(root / "data" / "reviews.sqlite") as store:
        return not store.votes() and not store.ratings()
