"""The backend interface: both backends satisfy `Backend`, the pipeline calls only its members,
and what the pipeline does with a backend's answers (sanitising) is the same for every side."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from medchat.backends import Backend
from medchat.backends.local import LocalBackend
from medchat.backends.openai import OpenAIBackend
from medchat.pipeline import Pipeline, as_pipeline
from medchat.settings import Settings

PIPELINE_SOURCE = Path(__file__).resolve().parent.parent / "medchat/pipeline.py"


def protocol_members() -> tuple[set[str], set[str]]:
    """(data members, methods and properties) Backend declares."""
    data = {name for name in Backend.__annotations__ if not name.startswith("_")}
    callables = {
        name
        for name, value in vars(Backend).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
    }
    return data, callables


def assigned_in_init(cls) -> set[str]:
    """The attributes `cls.__init__` sets on self (`self.x = ...`)."""
    tree = ast.parse(inspect.getsource(cls.__init__).lstrip())
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


@pytest.mark.parametrize("cls", [LocalBackend, OpenAIBackend])
def test_every_member_of_the_backend_protocol_is_on_both_classes(cls):
    data, callables = protocol_members()
    assert {"stream", "stream_pair", "generate_batch", "messages", "adapter_style"} <= callables
    assert {"profile", "tokenizer", "adapter"} <= data
    for name in callables:
        declared = vars(Backend)[name]
        mine = inspect.getattr_static(cls, name, None)
        assert mine is not None, f"{cls.__name__} has no {name}"
        if isinstance(declared, property):
            assert isinstance(mine, property), f"{cls.__name__}.{name} is not a property"
            continue
        assert inspect.isfunction(mine), f"{cls.__name__}.{name} is not a method"
        wanted = inspect.signature(declared).parameters
        have = inspect.signature(mine).parameters
        for param in wanted.values():
            if param.kind is param.VAR_KEYWORD:
                assert any(p.kind is p.VAR_KEYWORD for p in have.values()), (cls, name)
                continue
            assert param.name in have, f"{cls.__name__}.{name} lacks {param.name!r}"
            assert have[param.name].kind == param.kind, (cls, name, param.name)
            assert have[param.name].default == param.default, (cls, name, param.name)
    for name in data:
        found = inspect.getattr_static(cls, name, None) is not None
        assert found or name in assigned_in_init(cls), f"{cls.__name__} never sets {name}"


def test_an_openai_backend_is_a_backend_without_a_server(smollm2_tokenizer):
    from medchat.profiles import SMOLLM2

    backend = OpenAIBackend(
        "http://127.0.0.1:9/v1",
        profile=SMOLLM2,
        tokenizer=smollm2_tokenizer,
        base_model="base",
        tuned_model=None,
    )
    try:
        assert isinstance(backend, Backend)
        assert as_pipeline(backend, Settings(retrieval="off")).backend is backend
    finally:
        backend.close()


def test_a_local_backend_is_a_backend_and_an_engine_is_wrapped_in_one(llama_engine):
    backend = LocalBackend(llama_engine)
    assert isinstance(backend, Backend)
    assert not isinstance(llama_engine, Backend)
    settings = Settings(retrieval="off")
    assert as_pipeline(backend, settings).backend is backend
    wrapped = as_pipeline(llama_engine, settings).backend
    assert isinstance(wrapped, LocalBackend) and wrapped.engine is llama_engine


def test_the_pipeline_calls_declared_members_and_never_sniffs_a_backend():
    tree = ast.parse(PIPELINE_SOURCE.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        sniff = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        if sniff and node.func.id in ("getattr", "hasattr") and node.args:
            target = ast.unparse(node.args[0])
            assert "backend" not in target and target != "source", ast.unparse(node)
        if isinstance(node, ast.Attribute) and ast.unparse(node).endswith("backend.name"):
            raise AssertionError(f"the pipeline reads the backend's name: {ast.unparse(node)}")
    data, callables = protocol_members()
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self.backend"
    }
    assert used <= callables | data, used - (callables | data)


def test_a_pipeline_takes_the_style_its_backend_reports():
    from medchat.prompts import PromptStyle

    style = PromptStyle(system="Answer as trained.")

    class Styled:
        has_adapter = True
        adapter = "/not/read/by/the/pipeline"

        def adapter_style(self):
            return style, True

    pipeline = Pipeline(Styled(), Settings(retrieval="off"))
    assert (pipeline.style, pipeline.trained_style) == (style, True)


# -- messages: one implementation -------------------------------------------------------------
def test_every_backend_builds_messages_with_the_one_fitted_messages(llama_engine):
    """Engine, local and openai backends hand everything to generation.fitted_messages: the
    same messages for the same arguments, and no defaults of their own to drift apart."""
    from medchat.generation import fitted_messages
    from medchat.prompts import LEGACY_SYSTEM_PROMPT

    server = OpenAIBackend(
        "http://127.0.0.1:9/v1",
        profile=llama_engine.profile,
        tokenizer=llama_engine.tokenizer,
        base_model="base",
        tuned_model=None,
    )
    history = [
        {"role": "user", "content": "What is glaucoma? " * 40},
        {"role": "assistant", "content": "An eye disease that harms the optic nerve. " * 40},
    ]
    window = llama_engine.profile.context_window
    asks = [
        ((), {}),
        (([],), {"max_new_tokens": 64, "system": LEGACY_SYSTEM_PROMPT}),
        ((history,), {"max_new_tokens": window - 200}),  # the history does not fit
    ]
    try:
        for args, kw in asks:
            want = fitted_messages(
                llama_engine.profile, llama_engine.tokenizer, "Is it inherited?", *args, **kw
            )
            for builder in (llama_engine, LocalBackend(llama_engine), server):
                assert builder.messages("Is it inherited?", *args, **kw) == want, builder
        assert len(want) < 2 + len(history)  # the last ask did drop the history
        for method in (type(llama_engine).messages, LocalBackend.messages, server.messages):
            params = list(inspect.signature(method).parameters)
            assert params[-3:] == ["question", "history", "prompt"], method
    finally:
        server.close()


# -- what the pipeline gives out --------------------------------------------------------------
MARKUP = (
    'Rest <script>alert("x")</script> and see ![a scan](https://example.org/x.png) or '
    "[click](javascript:alert(1)) and [NEI](https://www.nei.nih.gov/) **soon**"
)


class MarkupBackend:
    """A backend whose every answer is MARKUP, growing; a tuned side exists."""

    name = "local"
    adapter = "stand-in"
    has_adapter = True
    tokenizer = None

    def adapter_style(self):
        from medchat.prompts import PromptStyle

        return PromptStyle(), True

    def messages(self, question, history=None, **prompt):
        from medchat.prompts import build_messages

        return build_messages(question, history)

    def stream(self, messages, params=None, *, tuned=True):
        for end in (20, 60, len(MARKUP)):
            yield MARKUP[:end]

    def stream_pair(self, messages, params=None):
        for end in (20, 60, len(MARKUP)):
            yield MARKUP[:end], MARKUP[:end]


def test_both_sides_of_a_pair_are_sanitised_as_a_lone_answer_is():
    from medchat.safety import sanitize_markdown

    pipeline = Pipeline(MarkupBackend(), Settings(retrieval="off"))
    turn = pipeline.prepare("What is glaucoma?", pair=True)
    lone = list(pipeline.stream(turn))
    pairs = list(pipeline.stream_pair(turn))
    assert [base for base, _ in pairs] == [tuned for _, tuned in pairs] == lone
    final = lone[-1]
    assert final == sanitize_markdown(MARKUP)
    for unsafe in ("<script", "javascript:", "](https://example"):
        assert unsafe not in final
    assert "[NEI](https://www.nei.nih.gov/)" in final and "**soon**" in final
    # Raw, for a terminal or a stored vote, both ways alike.
    assert list(pipeline.stream_pair(turn, markdown=False))[-1] == (MARKUP, MARKUP)
    assert list(pipeline.stream(turn, markdown=False))[-1] == MARKUP


# -- the openai backend's prompt style: the server's adapter, not the local settings ----------
def connect(monkeypatch, tmp_path, root: str | None, local_adapter: Path):
    """An openai backend from settings naming `local_adapter`, on a server (its model list
    stubbed) that serves the LoRA module `medchat` from `root` (None: no adapter)."""
    import medchat.backends.openai as openai_backend
    import medchat.loading

    models = {"smollm2-135m": {"id": "smollm2-135m", "root": "/models/smollm2", "parent": None}}
    if root is not None:
        models["medchat"] = {"id": "medchat", "root": root, "parent": "smollm2-135m"}
    monkeypatch.setattr(openai_backend, "list_models", lambda url, key="": models)
    monkeypatch.setattr(medchat.loading, "load_tokenizer", lambda *a, **kw: None)
    settings = Settings(
        backend="openai",
        server_url="http://127.0.0.1:9/v1",
        profile="smollm2-135m",
        adapter=str(local_adapter),
        cache_dir=tmp_path / "cache",
    )
    return OpenAIBackend.from_settings(settings)


def adapter_folder(path: Path, style) -> Path:
    from medchat.prompts import write_style

    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    write_style(path, style)
    return path


def test_the_openai_backend_serves_the_style_saved_in_the_folder_the_server_serves(
    monkeypatch, tmp_path, caplog
):
    from medchat.prompts import PromptStyle

    served_style = PromptStyle(system="Served.", retrieval={"method": "bm25", "k": 2})
    local_style = PromptStyle(system="Local settings.")
    served = adapter_folder(tmp_path / "served", served_style)
    local = adapter_folder(tmp_path / "local", local_style)
    with caplog.at_level("WARNING", logger="medchat.backends.openai"):
        backend = connect(monkeypatch, tmp_path, str(served), local)
        pipeline = Pipeline(backend, Settings(retrieval="off"))
    assert backend.adapter_style() == (served_style, True)
    assert pipeline.style == served_style and pipeline.trained_style
    assert "prompt style is unknown" not in caplog.text
    backend.close()


def test_an_adapter_folder_this_machine_cannot_read_gets_the_legacy_style_and_a_warning(
    monkeypatch, tmp_path, caplog
):
    from medchat.prompts import LEGACY_STYLE, PromptStyle

    local = adapter_folder(tmp_path / "local", PromptStyle(system="Local settings."))
    remote = "/srv/elsewhere/adapters/medchat-sources"  # the server's disk, not this one
    with caplog.at_level("WARNING", logger="medchat.backends.openai"):
        backend = connect(monkeypatch, tmp_path, remote, local)
        pipeline = Pipeline(backend, Settings(retrieval="off"))
    assert pipeline.style == LEGACY_STYLE and pipeline.trained_style
    assert "prompt style is unknown" in caplog.text and remote in caplog.text
    backend.close()
    # No adapter on the server: the base model's prompt, whatever the settings name.
    caplog.clear()
    backend = connect(monkeypatch, tmp_path, None, local)
    assert backend.adapter_style() == (PromptStyle(), False)
    assert "prompt style is unknown" not in caplog.text
    backend.close()
