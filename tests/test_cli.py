"""`python -m medchat`: flags and help, errors and exit codes, streaming output, Ctrl-C.

In-process tests hand the CLI a tiny-model engine; the subprocess ones run the real embedded
model end to end (they count as slow until its cache is warm).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import pytest

from medchat import __main__ as cli
from medchat.engine import Engine, GenerationParams
from medchat.presenter import MODEL_OWN, NO_NIH_TEXT, NOT_USED
from medchat.prompts import LEGACY_SYSTEM_PROMPT
from medchat.safety import classify
from medchat.settings import ENV_VARS

REPO = Path(__file__).resolve().parents[1]
FLAGS = (
    "--profile",
    "--adapter",
    "--max-new-tokens",
    "--temperature",
    "--cache-dir",
    "--device",
    "--retrieval",
)
QUESTION = "What is glaucoma?"


def final(items):
    last = deque(items, maxlen=1)
    return last[0] if last else None


def clean_env() -> dict[str, str]:
    """This environment without MEDCHAT_* settings, so only the flags choose."""
    return {k: v for k, v in os.environ.items() if k not in ENV_VARS}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medchat", *args],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Recorder:
    """A stdout that remembers each write and flush (and can play Ctrl-C on a given write)."""

    def __init__(self, interrupt_on: int | None = None):
        self.writes: list[str] = []
        self.flushes = 0
        self.interrupt_on = interrupt_on

    def write(self, text: str) -> int:
        self.writes.append(text)
        if self.interrupt_on is not None and len(self.writes) == self.interrupt_on:
            raise KeyboardInterrupt
        return len(text)

    def flush(self) -> None:
        self.flushes += 1

    @property
    def text(self) -> str:
        return "".join(self.writes)


@pytest.fixture
def use_engine(monkeypatch):
    """Make the CLI use a given engine; returns the list of Settings it was built from."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    built = []

    def install(engine: Engine) -> list:
        def from_settings(cls, settings):
            built.append(settings)
            return engine

        monkeypatch.setattr(Engine, "from_settings", classmethod(from_settings))
        return built

    return install


# -- help and flags -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["chat"], ["compare"], ["info"]])
def test_help_lists_every_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in out, flag
    assert "smollm2-135m" in out and "'none'" in out


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "medchat", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert all(cmd in result.stdout for cmd in ("chat", "compare", "info"))


def test_flags_become_settings_before_or_after_the_command():
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "--profile",
            "smollm2-135m",
            "chat",
            QUESTION,
            "--max-new-tokens",
            "8",
            "--adapter",
            "none",
        ]
    )
    settings = cli.settings_from_args(args)
    assert (settings.profile, settings.max_new_tokens, settings.adapter) == (
        "smollm2-135m",
        8,
        "none",
    )
    # Flags not given leave the environment's values in place.
    env_settings = cli.Settings.from_env(env={"MEDCHAT_TEMPERATURE": "0.7"})
    assert env_settings.temperature == 0.7
    args = parser.parse_args(["info", "--cache-dir", "/tmp/x", "--device", "cpu"])
    assert not hasattr(args, "temperature")
    settings = cli.settings_from_args(args)
    assert (str(settings.cache_dir), settings.device) == ("/tmp/x", "cpu")


# -- errors ---------------------------------------------------------------------------------------
def test_bad_setting_exits_2_before_loading(use_engine, capsys):
    built = use_engine(None)
    assert cli.main(["chat", QUESTION, "--temperature", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Setting temperature") and err.count("\n") == 1
    assert built == []  # no model was loaded


def test_bad_adapter_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "no-such-adapter"
    result = run_cli(
        "chat", QUESTION, "--profile", "smollm2-135m", "--adapter", str(missing),
        "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: Adapter") and str(missing) in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "cache").exists()  # failed before any model work


def test_compare_without_an_adapter_fails_before_loading(use_engine, capsys):
    built = use_engine(None)
    code = cli.main(["compare", QUESTION, "--profile", "smollm2-135m", "--adapter", "none"])
    assert code == 2
    assert "needs a fine-tuned adapter" in capsys.readouterr().err
    assert built == []


# -- commands on a tiny model ---------------------------------------------------------------------
def test_chat_streams_new_text_then_the_disclaimer(use_engine, llama_engine, monkeypatch):
    built = use_engine(llama_engine)
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    args = ["chat", QUESTION, "--max-new-tokens", "10", "--temperature", "0", "--retrieval", "off"]
    assert cli.main(args) == 0
    assert (built[0].max_new_tokens, built[0].temperature) == (10, 0.0)

    params = GenerationParams(max_new_tokens=10)
    answer = final(llama_engine.stream(llama_engine.messages(QUESTION), params))
    # Retrieval off: the answer is the model's own, and the line before it says so.
    warning = f"!! Not from NIH sources: {MODEL_OWN}\n\n"
    assert out.text == f"{warning}{answer}\n\n{cli.DISCLAIMER}\n"
    # Streamed: several pieces, each only the new part, each flushed.
    pieces = out.writes[1:-1]
    assert len(pieces) > 3 and "".join(pieces) == answer
    assert out.flushes >= len(pieces)


def test_chat_lists_the_nih_pages_found_under_an_answer_written_without_them(
    use_engine, llama_engine, monkeypatch
):
    """An adapter trained without sources (this one has no saved style: the legacy prompt) is
    served its training prompt even with retrieval on; the pages found are further reading,
    and the line before the answer says it is the model's own."""
    from medchat.retrieval import default_index
    from medchat.settings import Settings

    use_engine(llama_engine)
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    assert cli.main(["chat", QUESTION, "--max-new-tokens", "6", "--retrieval", "on"]) == 0
    hits = default_index(Settings()).search(QUESTION, k=3)
    assert hits and hits[0].passage.title.lower() == "glaucoma"
    params = GenerationParams(max_new_tokens=6)
    msgs = llama_engine.messages(QUESTION, max_new_tokens=6, system=LEGACY_SYSTEM_PROMPT)
    answer = final(llama_engine.stream(msgs, params))
    assert out.text.startswith(f"!! Not from NIH sources: {NOT_USED}\n\n{answer}")
    listed = out.text[len(f"!! Not from NIH sources: {NOT_USED}\n\n{answer}") :]
    assert listed.startswith("\n\nFurther reading (not used to write this answer):\n")
    assert f"<{hits[0].passage.url}>" in listed and listed.endswith(f"\n\n{cli.DISCLAIMER}\n")


def test_compare_prints_both_answers_labelled(use_engine, llama_engine, tiny_llama_adapter, capsys):
    built = use_engine(llama_engine)
    adapter = str(tiny_llama_adapter)
    args = ["compare", QUESTION, "--max-new-tokens", "10", "--adapter", adapter]
    assert cli.main([*args, "--retrieval", "off"]) == 0
    assert built[0].adapter == adapter
    out = capsys.readouterr().out
    base, tuned = final(
        llama_engine.stream_pair(
            llama_engine.messages(QUESTION), GenerationParams(max_new_tokens=10)
        )
    )
    info = llama_engine.info()
    assert out == (
        f"!! Not from NIH sources: {MODEL_OWN}\n\n"  # retrieval off: both are the models' own
        f"=== base model ({info['base_model']}) ===\n{base}\n\n"
        f"=== fine-tuned ({info['adapter']}) ===\n{tuned}\n\n{cli.DISCLAIMER}\n"
    )
    assert base != tuned


def test_info_prints_every_field(use_engine, llama_engine, capsys, tmp_path):
    use_engine(llama_engine)
    assert cli.main(["info", "--cache-dir", str(tmp_path)]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.strip().splitlines())
    lines = {k: v.strip() for k, v in lines.items()}
    info = llama_engine.info()
    assert lines["profile"] == "tiny-llama"
    assert lines["base model"] == info["base_model"]
    assert lines["base source"] == info["base_source"]
    assert lines["adapter"] == info["adapter"]
    assert lines["device"] == "cpu" and lines["dtype"] == "float32"
    assert lines["cache dir"] == str(tmp_path)


def test_ctrl_c_exits_130_and_stops_generation(use_engine, fresh_llama_engine, monkeypatch):
    engine = fresh_llama_engine
    use_engine(engine)
    monkeypatch.setattr(sys, "stdout", Recorder(interrupt_on=3))
    start = time.monotonic()
    assert cli.main(["chat", QUESTION, "--max-new-tokens", "250", "--retrieval", "off"]) == 130
    deadline = time.monotonic() + 1
    while engine.alive_threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.alive_threads == []
    assert time.monotonic() - start < 5


def test_chat_gives_an_emergency_alert_and_holds_the_answer(use_engine, fresh_llama_engine, capsys):
    use_engine(fresh_llama_engine)
    question = "my dad's face is drooping and he can't lift his arm right now"
    assert cli.main(["chat", question, "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    flag = classify(question)
    assert flag is not None and flag.allow_answer
    assert out.startswith(cli.alert_box(flag.notice) + "\n\n")
    assert "--general-info" in out and out.rstrip().endswith(cli.DISCLAIMER)
    assert fresh_llama_engine.generations_started == 0, "the model answered before the person asked"


def test_general_info_after_the_alert_is_nih_text_under_a_heading(
    use_engine, fresh_llama_engine, capsys
):
    use_engine(fresh_llama_engine)
    question = "my dad's face is drooping and he can't lift his arm right now"
    args = ["chat", question, "--max-new-tokens", "5", "--general-info"]
    assert cli.main([*args, "--retrieval", "off"]) == 0
    out = capsys.readouterr().out
    alert, rest = out.split("\n\n", 1)
    assert alert.startswith(cli.ALERT_RULE) and alert.endswith(cli.ALERT_RULE)
    assert rest.startswith("General information, not advice for your situation.")
    # Nothing retrieved: no NIH text, the advice to get help again, and no model answer.
    assert NO_NIH_TEXT in rest and rest.rstrip().endswith(cli.DISCLAIMER)
    assert fresh_llama_engine.generations_started == 0, "the model wrote general information"


def test_chat_gives_crisis_lines_and_no_answer_for_self_harm(
    use_engine, fresh_llama_engine, capsys
):
    use_engine(fresh_llama_engine)
    question = "I want to kill myself tonight"
    assert cli.main(["chat", question, "--max-new-tokens", "5"]) == 0
    flag = classify(question)
    assert flag is not None and not flag.allow_answer
    assert capsys.readouterr().out == f"{cli.alert_box(flag.notice)}\n\n{cli.DISCLAIMER}\n"
    assert fresh_llama_engine.generations_started == 0, "the model must not be asked at all"


def test_chat_rejects_an_empty_question_in_one_line(use_engine, llama_engine, capsys):
    use_engine(llama_engine)
    assert cli.main(["chat", "   "]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_disclaimer_is_one_line():
    text = cli.DISCLAIMER
    assert text and "\n" not in text.strip()


# -- end to end on the embedded model -----------------------------------------------------------
@pytest.mark.embedded
def test_info_on_the_embedded_model(cache_dir):
    result = run_cli(
        "info", "--profile", "smollm2-135m", "--adapter", "none", "--cache-dir", str(cache_dir)
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "profile:      smollm2-135m" in out
    assert "base model:   HuggingFaceTB/SmolLM2-135M-Instruct" in out
    assert f"base source:  {cache_dir / 'models' / 'smollm2-135m-instruct'}" in out
    assert "adapter:      none" in out and "device:       cpu" in out
    assert f"cache dir:    {cache_dir}" in out and "dtype:        float32" in out


@pytest.mark.embedded
def test_chat_on_the_embedded_model(cache_dir):
    result = run_cli(
        "chat", "What are the symptoms of glaucoma?", "--profile", "smollm2-135m",
        "--adapter", "none", "--max-new-tokens", "8", "--cache-dir", str(cache_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer, _, disclaimer = result.stdout.rstrip("\n").rpartition("\n\n")
    assert disclaimer == cli.DISCLAIMER
    assert len(answer.split()) >= 3 and answer.isascii()


@pytest.mark.slow  # heavy: CI runs it (make test-slow)
@pytest.mark.embedded
def test_sigint_on_the_embedded_model_exits_130(cache_dir):
    # A terminal's Ctrl-C reaches a program whose SIGINT is not ignored. A test run started in
    # the background (`make test &`, nohup) inherits SIGINT ignored, and so would the child:
    # give it the default disposition, as a terminal would (exec resets a handler to default).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = _start_chat_for_sigint(cache_dir)
    finally:
        signal.signal(signal.SIGINT, previous)
    _interrupt_and_check(proc)


def _start_chat_for_sigint(cache_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "medchat", "chat", "What are the symptoms of glaucoma?",
         "--profile", "smollm2-135m", "--adapter", "none", "--max-new-tokens", "400",
         "--cache-dir", str(cache_dir)],
        cwd=REPO, env=clean_env() | {"PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _interrupt_and_check(proc: subprocess.Popen) -> None:
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no answer started within 120 s"
        assert proc.stdout.read1(64)  # the answer has started streaming
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            proc.wait(timeout=30)
            stacks = proc.stderr.read().decode(errors="replace")[-6000:]
            pytest.fail(f"still running 15 s after SIGINT; its threads:\n{stacks}")
        assert proc.returncode == 130
        assert time.monotonic() - start < 5  # generation stopped at once, not after 400 tokens
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
