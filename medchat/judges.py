"""Statement judges: does an answer entail, contradict or neither a statement?

    judge = make_judge("offline", embedder=embedder)          # medchat.offline_judge, on a CPU
    judge = make_judge("llm", url="http://127.0.0.1:8000/v1", model="NAME")
    judge.judge([(answer, statement), ...])                   # [Judgement(verdict, ...), ...]

Every judge has a `name` ("offline", "llm"), an `identity` (name, model, prompt version or
weights hash: a record names the exact judge) and the `agreement` with K-QA's physicians that
`python -m eval.judge_agreement` measured for it (None when not measured), so every score a
judge produced can be shown with how far to trust it.

The llm judge asks any OpenAI-compatible /chat/completions model one question per
(answer, statement), at temperature 0, with the prompt below; a reply that is not exactly one
of the three verdicts is recorded as "unparsed", never guessed. Requests run a few at a time,
are retried on transport errors, and every verdict is cached on disk (sqlite) under a key of
(answer, statement, judge identity), so a rerun asks nothing twice. The API key
(MEDCHAT_JUDGE_API_KEY, else MEDCHAT_SERVER_API_KEY) goes in the Authorization header only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from medchat.errors import MedchatError
from medchat.settings import REPO_ROOT

VERDICTS = ("entailed", "contradicted", "neither")
UNPARSED = "unparsed"
JUDGE_NAMES = ("offline", "llm", "none")
JUDGES_DIR = REPO_ROOT / "assets" / "judges"
PROMPT_VERSION = "statement-v1"
SYSTEM = (
    "You are a physician checking a medical answer against one statement. You judge only what "
    "the answer says, not whether the statement is true."
)
USER = """Answer:
<<<
{answer}
>>>

Statement: {statement}

Does the answer entail the statement (it says it, or clearly implies it), contradict it (it says \
something that cannot be true together with it), or neither (it does not address it)?
Reply with one word: entailed, contradicted or neither."""
_REPLY = re.compile(r"^\W*(entailed|contradicted|neither)\W*$", re.IGNORECASE)
RETRIES = 3
MAX_TOKENS = 8


@dataclass(frozen=True)
class Judgement:
    """One verdict: entailed / contradicted / neither / unparsed, with the offline judge's
    probabilities (None for the llm judge) and the llm's raw reply (None offline)."""

    verdict: str
    entailed_score: float | None = None
    contradicted_score: float | None = None
    reply: str | None = None


def parse_verdict(reply: str) -> str:
    """The verdict a reply states, or "unparsed": exactly one of the three words, in any case,
    with punctuation around it at most."""
    match = _REPLY.match(reply or "")
    return match.group(1).lower() if match else UNPARSED


def cache_key(answer: str, statement: str, identity: str) -> str:
    return hashlib.sha256(json.dumps([answer, statement, identity]).encode()).hexdigest()


class VerdictCache:
    """Verdicts on disk (sqlite), keyed by (answer, statement, judge identity); thread-safe."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, reply TEXT)")
        self._db.commit()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM verdicts WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", (key, reply))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LLMJudge:
    """One chat request per (answer, statement) to an OpenAI-compatible server."""

    name = "llm"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str = "",
        cache_dir: Path | None = None,
        max_in_flight: int = 4,
        timeout: float = 120.0,
    ):
        from medchat.backends.openai import normalize_url

        self.url = normalize_url(url)
        self.model = model
        self.max_in_flight = max(1, int(max_in_flight))
        self.identity = f"llm:{model}:{PROMPT_VERSION}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout, connect=5.0), trust_env=False
        )
        self.requests = 0  # sent to the server (cache hits send none)
        self._count = threading.Lock()
        cache_dir = Path(cache_dir) if cache_dir else _default_cache_dir()
        self.cache = VerdictCache(cache_dir / "judges" / "llm-verdicts.sqlite")
        self.agreement = _saved_agreement(self)

    def info(self) -> dict:
        return {
            "name": self.name,
            "identity": self.identity,
            "model": self.model,
            "url": self.url,
            "prompt_version": PROMPT_VERSION,
            "agreement": self.agreement,
        }

    def messages(self, answer: str, statement: str) -> list[dict]:
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER.format(answer=answer.strip(), statement=statement)},
        ]

    def ask(self, answer: str, statement: str) -> str:
        """The model's reply (cached); transport errors are retried, then a MedchatError."""
        key = cache_key(answer, statement, self.identity)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        body = {
            "model": self.model,
            "messages": self.messages(answer, statement),
            "temperature": 0.0,
            "max_tokens": MAX_TOKENS,
        }
        for attempt in range(RETRIES):
            with self._count:
                self.requests += 1
            try:
                response = self._client.post(f"{self.url}/chat/completions", json=body)
            except httpx.TransportError as err:
                if attempt == RETRIES - 1:
                    raise MedchatError(
                        f"The judge's server at {self.url} did not answer ({type(err).__name__}) "
                        f"after {RETRIES} tries; check --judge-url."
                    ) from None
                time.sleep(0.5 * 2**attempt)
                continue
            if response.status_code >= 500 and attempt < RETRIES - 1:
                time.sleep(0.5 * 2**attempt)
                continue
            if response.status_code != 200:
                raise MedchatError(
                    f"The judge's server at {self.url} refused the request (HTTP "
                    f"{response.status_code}); check --judge-model {self.model!r} and the key."
                )
            reply = response.json()["choices"][0]["message"].get("content") or ""
            self.cache.put(key, reply)
            return reply
        raise AssertionError("unreachable")

    def judge(self, pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        with ThreadPoolExecutor(self.max_in_flight) as pool:
            replies = list(pool.map(lambda p: self.ask(*p), pairs))
        return [Judgement(parse_verdict(r), reply=r) for r in replies]

    def close(self) -> None:
        self._client.close()
        self.cache.close()


def _default_cache_dir() -> Path:
    from medchat.settings import Settings

    return Path(Settings.from_env().cache_dir).expanduser()


def _saved_agreement(judge) -> dict | None:
    """The agreement saved for this exact judge (model and prompt version), or None."""
    model = re.sub(r"[^\w.-]+", "-", judge.model).strip("-.") or "model"
    path = JUDGES_DIR / f"llm-{model}.json"
    if not path.is_file():
        return None
    agreement = json.loads(path.read_text()).get("agreement") or {}
    return agreement if agreement.get("judge") == judge.identity else None


def add_judge_flags(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    group = parser.add_argument_group("statement judge")
    group.add_argument(
        "--judge",
        choices=JUDGE_NAMES if default is None else JUDGE_NAMES[:2],
        default=default,
        help="who decides whether an answer entails or contradicts each statement: offline "
        "(MiniLM features and a fitted classifier, CPU) or llm (an OpenAI-compatible chat "
        "model); none skips statement scores"
        + ("" if default else " (default: offline when the data has statements)"),
    )
    group.add_argument(
        "--judge-url",
        metavar="URL",
        help="the llm judge's API root (MEDCHAT_JUDGE_URL, else MEDCHAT_SERVER_URL); the key "
        "comes from MEDCHAT_JUDGE_API_KEY (else MEDCHAT_SERVER_API_KEY) only",
    )
    group.add_argument(
        "--judge-model",
        metavar="NAME",
        help="the llm judge's model name on that server (MEDCHAT_JUDGE_MODEL; default: the "
        "base model the server lists)",
    )


def make_judge(
    name: str,
    *,
    embedder=None,
    url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    cache_dir: Path | None = None,
):
    """The judge called `name`: "offline" (needs `embedder`) or "llm"."""
    if name == "offline":
        from medchat.offline_judge import OfflineJudge

        if embedder is None:
            from medchat.metrics import Embedder

            embedder = Embedder("bundled")
        return OfflineJudge.load(embedder)
    if name != "llm":
        raise MedchatError(f"--judge is {name!r}; use offline or llm.")
    url = url or os.environ.get("MEDCHAT_JUDGE_URL") or os.environ.get("MEDCHAT_SERVER_URL")
    if not url:
        raise MedchatError(
            "The llm judge needs a server; pass --judge-url http://HOST:PORT/v1 or set "
            "MEDCHAT_JUDGE_URL."
        )
    if api_key is None:
        api_key = os.environ.get("MEDCHAT_JUDGE_API_KEY") or os.environ.get(
            "MEDCHAT_SERVER_API_KEY", ""
        )
    model = model or os.environ.get("MEDCHAT_JUDGE_MODEL")
    if not model:
        from medchat.backends.openai import list_models, normalize_url

        models = list_models(normalize_url(url), api_key)
        if not models:
            raise MedchatError(f"The judge's server at {url} lists no model; pass --judge-model.")
        model = next((m for m, e in models.items() if not e.get("parent")), next(iter(models)))
    return LLMJudge(url, model, api_key=api_key, cache_dir=cache_dir)
