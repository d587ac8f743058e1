"""Scores: the embedder (bundled all-MiniLM-L6-v2 on CPU), ROUGE-L, repetition, statistics."""

from __future__ import annotations

import http.server
import logging
import random
import shutil
import threading
import time
import types

import numpy as np
import pytest

from medchat import metrics
from medchat.errors import MedchatError
from medchat.metrics import (
    BUNDLED_SHA256,
    Embedder,
    bootstrap_ci,
    describe,
    distinct_2,
    lcs_length,
    paired_summary,
    repeated_ngram_share,
    rouge_l_f1,
)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder("bundled", device="cpu")


# -- embedder --------------------------------------------------------------------------------
def test_bundled_embedder_is_verified_and_named(embedder):
    assert embedder.sha256 == BUNDLED_SHA256
    assert metrics.file_sha256(metrics.bundled_model_dir() / "model.safetensors") == BUNDLED_SHA256
    assert "all-MiniLM-L6-v2" in embedder.name and BUNDLED_SHA256 in embedder.name
    assert embedder.source == "bundled"
    assert embedder.max_seq_length == 256


def test_default_embedder_is_the_cached_seed_model_or_the_bundled_one():
    default = Embedder()
    bundled = f"{metrics.BUNDLED_MODEL} (sha256 {BUNDLED_SHA256})"
    assert default.name in (metrics.SEED_EMBEDDER, bundled)
    assert default.source in (metrics.SEED_EMBEDDER, "bundled")


def test_bundled_embedder_with_wrong_checksum_is_refused(monkeypatch):
    monkeypatch.setattr(metrics, "BUNDLED_SHA256", "0" * 64)
    with pytest.raises(MedchatError, match="sha256"):
        Embedder("bundled")


@pytest.mark.parametrize("name", ["/no/such/embedder", "./missing-model", "a/b/c"])
def test_missing_embedder_is_one_sentence(name):
    with pytest.raises(MedchatError, match="does not exist") as info:
        Embedder(name)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


def test_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(MedchatError, match="Could not load embedder"):
        Embedder(str(tmp_path))


def test_corrupt_weights_are_one_sentence_not_a_raw_error(tmp_path):
    # safetensors raises its own exception type (not an OSError) for a damaged file.
    folder = tmp_path / "damaged"
    shutil.copytree(metrics.bundled_model_dir(), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(MedchatError, match="Could not load embedder") as info:
        Embedder(str(folder), device="cpu")
    assert str(folder) in str(info.value) and str(info.value).endswith(".")


# -- the MEDCHAT_EMBEDDER setting and the default on a Space ---------------------------------
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A stand-in model hub on 127.0.0.1 that has no models (every request is a 404), with an
    empty model cache: the paths the hub was asked for are recorded in `hub.requests`."""
    from huggingface_hub import constants

    requests: list[str] = []

    class NoModels(http.server.BaseHTTPRequestHandler):
        def answer(self):
            requests.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoModels)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    # huggingface_hub reads these from the environment once, at import: set the constants.
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    try:
        yield types.SimpleNamespace(requests=requests, endpoint=endpoint)
    finally:
        server.shutdown()
        server.server_close()


def go_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


BUNDLED_NAME = f"{metrics.BUNDLED_MODEL} (sha256 {BUNDLED_SHA256})"


def test_off_a_space_the_default_never_asks_the_hub(hub):
    default = Embedder.from_setting("", device="cpu")
    assert default.name == BUNDLED_NAME and default.source == "bundled"  # the seed is not cached
    assert hub.requests == []


def test_on_a_space_the_default_downloads_the_seed_else_scores_with_the_bundled_one(
    hub, monkeypatch, caplog
):
    monkeypatch.setenv("SPACE_ID", "someone/medchat")
    with caplog.at_level(logging.WARNING, logger="medchat.metrics"):
        default = Embedder.from_setting("", device="cpu")
    # The hub was asked for the seed's files (a download is allowed on a Space)...
    assert any(metrics.SEED_EMBEDDER in path for path in hub.requests)
    # ... and as this hub has none, the bundled model scores, named as such, with a warning.
    assert default.name == BUNDLED_NAME and default.sha256 == BUNDLED_SHA256
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and metrics.SEED_EMBEDDER in warning[0]
    assert "Could not load embedder" in warning[0] and hub.endpoint in warning[0]


def test_on_a_space_offline_the_default_falls_back_at_once(hub, monkeypatch, caplog):
    monkeypatch.setenv("SPACE_ID", "someone/medchat")
    go_offline(monkeypatch)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="medchat.metrics"):
        default = Embedder.from_setting("", device="cpu")
    assert default.name == BUNDLED_NAME and hub.requests == []
    assert time.perf_counter() - start < 60  # no network retries
    assert any(metrics.SEED_EMBEDDER in r.getMessage() for r in caplog.records)


def test_an_explicit_setting_loads_that_model_and_never_falls_back(hub, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/medchat")
    folder = metrics.bundled_model_dir()
    by_path = Embedder.from_setting(str(folder), device="cpu")
    assert by_path.name == by_path.source == str(folder) and by_path.sha256 == BUNDLED_SHA256
    assert Embedder.from_setting(" bundled ", device="cpu").name == BUNDLED_NAME
    with pytest.raises(MedchatError, match="Could not load embedder 'someone/no-such-embedder'"):
        Embedder.from_setting("someone/no-such-embedder", device="cpu")
    assert any("someone/no-such-embedder" in path for path in hub.requests)
    assert not any(metrics.SEED_EMBEDDER in path for path in hub.requests)


def test_settings_choose_the_embedder_and_the_reference_book_reports_failures(hub, tmp_path):
    from medchat.settings import Settings
    from medchat.ui.common import ReferenceBook

    settings = Settings(embedder="bundled", device="cpu", data_dir=tmp_path)
    assert metrics.embedder_for(settings).source == "bundled"
    book = ReferenceBook(None, Settings(embedder=str(tmp_path / "missing"), data_dir=tmp_path))
    with pytest.raises(MedchatError, match="does not exist") as first:
        book.embedder()
    # The failure is remembered for a while: the same error, no new attempt to load.
    (tmp_path / "missing").mkdir()
    with pytest.raises(MedchatError) as again:
        book.embedder()
    assert again.value is first.value
    book = ReferenceBook(None, settings)
    assert book.embedder() is book.embedder()  # loaded once
    assert book.cosines(["same text", "other words entirely"], "same text")[0] == pytest.approx(
        1.0, abs=1e-5
    )


def test_cosine_identical_unrelated_and_paraphrase(embedder):
    ref = "Glaucoma is a group of eye diseases that damage the optic nerve."
    paraphrase = "Glaucoma names several eye conditions that harm the optic nerve."
    unrelated = "The quarterly sales report is due on Friday afternoon."
    sims = embedder.cosine([ref, paraphrase, unrelated], [ref, ref, ref])
    assert sims.shape == (3,) and sims.dtype == np.float64
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[2] < 0.3
    assert sims[1] > sims[2] + 0.3


def test_cosine_is_row_by_row_and_symmetric(embedder):
    a = ["What causes asthma?", "How is diabetes treated?"]
    b = ["How is diabetes treated?", "What causes asthma?"]
    sims = embedder.cosine(a, b)
    assert sims[0] == pytest.approx(sims[1], abs=1e-6)  # same pair, swapped
    assert sims[0] < 0.99
    assert embedder.cosine([], []).shape == (0,)
    with pytest.raises(ValueError):
        embedder.cosine(["one"], [])


def test_cosine_encodes_all_texts_in_one_call(embedder, monkeypatch):
    calls = []
    real = embedder.encode

    def counting(texts, batch_size=32):
        calls.append(list(texts))
        return real(texts, batch_size)

    monkeypatch.setattr(embedder, "encode", counting)
    embedder.cosine(["x", "y", "x"], ["ref", "ref", "ref"])
    assert len(calls) == 1 and sorted(calls[0]) == ["ref", "x", "y"]  # duplicates embedded once


# -- ROUGE-L and repetition ------------------------------------------------------------------
def _lcs_table(a, b) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            if x == y:
                table[i + 1][j + 1] = table[i][j] + 1
            else:
                table[i + 1][j + 1] = max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_lcs_matches_the_textbook_table():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        assert lcs_length(a, b) == _lcs_table(a, b)
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the classic example


@pytest.mark.parametrize(
    ("candidate", "reference", "expected"),
    [
        ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS 5 of 6 and 6
        ("a b c d", "a c", 2 / 3),  # P = 2/4, R = 2/2, F1 = 2PR/(P+R)
        ("The Cat!", "the cat", 1.0),  # lower-cased words, punctuation ignored
        ("one two three", "four five", 0.0),
        ("", "anything", 0.0),
        ("c b a", "a b c", 1 / 3),  # order matters: LCS 1
    ],
)
def test_rouge_l_known_pairs(candidate, reference, expected):
    assert rouge_l_f1(candidate, reference) == pytest.approx(expected)


def test_repetition_measures():
    assert repeated_ngram_share("a b c a b c") == pytest.approx(1 / 4)  # abc bca cab abc
    assert repeated_ngram_share("one two three four") == 0.0
    assert repeated_ngram_share("too short") == 0.0
    assert repeated_ngram_share("la " * 50) > 0.95
    assert distinct_2("a b a b") == pytest.approx(2 / 3)  # ab ba ab
    assert distinct_2("word") == 1.0


# -- statistics ------------------------------------------------------------------------------
def test_bootstrap_ci_contains_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.5, 0.1, 30), rng.normal(0.5, 0.1, 3000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s
    assert lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5  # ~sqrt(100) = 10x narrower
    # About 1.96 standard errors each side for a normal sample.
    assert (hi_l - lo_l) == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(3000), rel=0.15)
    assert bootstrap_ci(small) == bootstrap_ci(small)  # seeded
    assert bootstrap_ci(small, alpha=0.5)[1] - bootstrap_ci(small, alpha=0.5)[0] < hi_s - lo_s


def test_bootstrap_edge_cases():
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert all(np.isnan(bootstrap_ci([])))
    assert bootstrap_ci([1.0, np.nan, 1.0]) == (1.0, 1.0)


def test_describe():
    d = describe([1.0, 2.0, 3.0, 10.0])
    assert d["n"] == 4 and d["mean"] == 4.0 and d["median"] == 2.5
    assert d["std"] == pytest.approx(np.std([1, 2, 3, 10], ddof=1))
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert describe([])["mean"] is None and describe([])["n"] == 0


def test_paired_summary_counts_wins_ties_and_losses():
    base = [0.1, 0.2, 0.3, 0.4]
    tuned = [0.2, 0.2, 0.5, 0.3]  # win, tie, win, loss
    s = paired_summary(base, tuned)
    assert (s["wins"], s["ties"], s["losses"], s["n"]) == (2, 1, 1, 4)
    assert s["win_rate"] == 0.5 and s["tie_rate"] == 0.25
    assert s["mean_diff"] == pytest.approx(0.05)
    assert s["ci_low"] <= s["mean_diff"] <= s["ci_high"]
    better = paired_summary(np.zeros(50), np.full(50, 0.1) + np.linspace(0, 0.01, 50))
    assert better["win_rate"] == 1.0 and better["ci_low"] > 0
    with pytest.raises(ValueError):
        paired_summary([1.0], [1.0, 2.0])
