"""The one request path: clean -> triage -> retrieve -> build messages -> backend -> sanitise.

The CLI, every tab of the app and evaluation call this; none of them repeats a step.

    pipeline = Pipeline(make_backend(settings), settings)
    turn = pipeline.prepare("my chest hurts", history)     # MedchatError for a bad message
    if turn.flag: show(turn.flag.notice)                  # before any answer
    if turn.answerable:                                   # not held by an emergency notice
        for text in pipeline.stream(turn): ...            # sanitised markdown, growing
    for base, tuned in pipeline.stream_pair(turn): ...    # both sanitised the same way
    answers = pipeline.generate_batch(questions, params)  # evaluation: no triage, raw text

What a turn shows (the warning before an answer, the sources under it, general information
after an emergency notice) is decided by medchat.presenter; the CLI and the tabs render that.

A Turn carries the cleaned question, the red flag (or None), the generation settings, the
messages the one prompt builder made (or the one-sentence reason they could not be built), the
NIH passages in the prompt (`sources`) and those found but kept out of it (`reading`).

Every adapter is served the prompt it was trained with: the prompt style saved with it
(medchat.prompts) gives the system prompt, and whether its prompts carry a sources block.
- An adapter trained with sources (style.retrieval set) gets the passages retrieved for the
  question in its prompt, with its own method and k.
- An adapter trained without them (the shipped one) gets none: its question is still
  searched, and the passages found are shown under the answer as further reading only.
- The base model alone has no training prompt to match: MEDCHAT_RETRIEVAL decides (auto: the
  passages go into the prompt when the index can be built; on: they must).
- MEDCHAT_RETRIEVAL=off turns retrieval off entirely: nothing is searched and no prompt has a
  sources block (an adapter trained with sources then gets prompts it was not trained on; a
  warning is logged at start).
- Compare (and Chat with the fine-tuned adapter switched off) gives the base model the
  adapter's prompt: one prompt for both sides, the one the adapter was trained with, so a
  vote compares the models and not two prompts.
A page the library only points to (`hit.covered` False: its text is not held) never enters a
prompt. After an emergency notice, general information is the NIH passages themselves, never
text the model wrote.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from medchat.errors import MedchatError
from medchat.generation import Generation, GenerationParams
from medchat.prompts import Message, PromptStyle, content_text
from medchat.safety import RedFlag, classify, clean_message, sanitize_markdown

if TYPE_CHECKING:
    from medchat.backends import Backend

log = logging.getLogger(__name__)

GENERAL_INFO_HEADING = (
    "**General information, not advice for your situation.** It cannot tell whether this is "
    "an emergency; if it might be, get help first."
)


@dataclass(frozen=True)
class Turn:
    question: str  # cleaned
    flag: RedFlag | None
    params: GenerationParams
    messages: list[Message] | None = None  # None: the model must not answer, or `error`
    error: str | None = None  # why the prompt could not be built (one sentence)
    general_info: bool = False  # the person asked for general information after a notice
    # Retrieval Hits in the prompt's sources block, best first ([n] = position); () for a
    # block saying no source matched; None when the prompt has no sources block.
    sources: tuple | None = None
    # Hits found for the question but not in the prompt (the adapter was trained without
    # sources, the page's text is not in the library, or the passage did not fit); for
    # general information, the passages shown. None when nothing was searched.
    reading: tuple | None = None
    prompt_style: str = ""  # PromptStyle.id of the prompt as built (medchat.prompts)

    @property
    def general(self) -> bool:
        """After an emergency notice the person asked for general information: they get the
        NIH passages on the topic word for word, and no model answer."""
        flag = self.flag
        return (
            self.general_info
            and flag is not None
            and flag.allow_answer
            and getattr(flag, "is_emergency", True)
        )

    def record(self) -> dict[str, Any]:
        """What a vote, rating or thumb stores about the prompt behind an answer: its style,
        whether it had a sources block, and the passages in it (key and link, in order)."""
        return {
            "prompt_style": self.prompt_style,
            "sources_in_prompt": self.sources is not None,
            "prompt_sources": source_refs(self.sources),
        }

    @property
    def held(self) -> bool:
        """An emergency notice was shown: the model's answer waits until the person asks for
        general information (one click in the app, --general-info in the CLI)."""
        flag = self.flag
        return (
            flag is not None
            and flag.allow_answer
            and getattr(flag, "is_emergency", True)
            and not self.general_info
        )

    @property
    def answerable(self) -> bool:
        """The model may answer now: a prompt was built and no notice holds the answer."""
        return self.messages is not None and not self.held

    @property
    def heading(self) -> str:
        """What goes above an answer given after an emergency notice (else nothing)."""
        return GENERAL_INFO_HEADING if self.general else ""


def source_refs(hits: Sequence[Any] | None) -> list[dict[str, str]]:
    """[{"key", "url"}] of retrieval hits (or passages), in order; [] for none."""
    out = []
    for hit in hits or ():
        p = getattr(hit, "passage", hit)
        out.append({"key": str(getattr(p, "key", "")), "url": str(getattr(p, "url", ""))})
    return out


def covered(hit: Any) -> bool:
    """The library holds the hit's page text (False: a pointer to a page it does not hold)."""
    return bool(getattr(hit, "covered", True))


def sources_in_prompt(retrieval: str, style: PromptStyle, trained_style: bool) -> bool:
    """Whether prompts carry a sources block: an adapter's as it was trained (`trained_style`:
    `style` is known to be its training prompt), the base model's (or an adapter of unknown
    training's) as the retrieval setting says; never with retrieval "off". Evaluation's
    `--retrieval auto` asks this too, so a run scores the prompts the app serves."""
    if retrieval == "off":
        return False
    if trained_style:
        return style.retrieval is not None
    return True


class Pipeline:
    def __init__(self, backend: Backend, settings=None, *, index=None):
        """`index`: a medchat.retrieval.Index to search (default: the shipped MedQuAD's,
        built on first use when the retrieval setting allows)."""
        from medchat.settings import Settings

        self.backend = backend
        self.settings = settings if settings is not None else Settings()
        # The served adapter's prompt style, and whether it is known to be the one the adapter
        # was trained with (a saved style, or an adapter saved before styles were saved).
        self.style, self.trained_style = self._style()
        if self.settings.retrieval == "off" and self.trained_style and self.style.retrieval:
            log.warning(
                "The adapter was trained with NIH sources in its prompts; with retrieval off "
                "it is served prompts without them."
            )
        self._index = index
        self._index_error: str | None = None
        self._index_lock = threading.Lock()

    def _style(self) -> tuple[PromptStyle, bool]:
        """(the prompt style saved with the served adapter, whether it is the adapter's own);
        see medchat.prompts. A folder with neither a saved style nor an adapter config says
        nothing of its training: it is served like the base model alone."""
        if not self.backend.has_adapter:
            return PromptStyle(), False
        return self.backend.adapter_style()

    @property
    def grounded(self) -> bool:
        """Whether prompts carry a sources block (see sources_in_prompt)."""
        return sources_in_prompt(self.settings.retrieval, self.style, self.trained_style)

    def prompt_style(self, with_sources: bool) -> PromptStyle:
        """The style a prompt is built with, with or without its sources block (for records)."""
        if not with_sources:
            return self.style.served(None)
        return self.style.served({"method": self.retrieval_method, "k": self.retrieval_k})

    # -- retrieval ------------------------------------------------------------------------------
    @property
    def retrieval_k(self) -> int:
        trained = self.style.retrieval or {}
        return int(trained.get("k") or self.settings.retrieval_k)

    @property
    def retrieval_method(self) -> str:
        trained = self.style.retrieval or {}
        return str(trained.get("method") or self.settings.retrieval_method)

    def retriever(self):
        """The index answers are grounded in, or None when retrieval is off or unavailable
        (with "auto", a missing index or bm25s turns retrieval off, logged once)."""
        if self.settings.retrieval == "off":
            return None
        with self._index_lock:
            if self._index is None and self._index_error is None:
                from medchat.retrieval import default_index

                try:
                    self._index = default_index(self.settings, method=self.retrieval_method)
                except (MedchatError, ImportError, OSError) as err:
                    self._index_error = str(err)
                    if self.settings.retrieval == "on":
                        raise MedchatError(
                            f"Retrieval is on but its index could not be built ({err}); "
                            "install bm25s or set MEDCHAT_RETRIEVAL=off."
                        ) from None
                    log.warning("Answers come without sources: %s", err)
            return self._index

    def retrieve(self, question: str, earlier: Sequence[str] = ()) -> tuple | None:
        """The NIH passages for `question` (best first; empty when none is relevant), or None
        when retrieval is off. `earlier`: the person's earlier messages, oldest first; a
        follow-up that names no topic is searched with the topic they last named, and one
        sent with no earlier message ("What about bronchitis?") gets no passage (topic
        retrieval only)."""
        index = self.retriever()
        if index is None:
            return None
        query = index.in_context(question, earlier)
        return tuple(index.search(query, k=self.retrieval_k, alone=not earlier))

    def warm_up_retrieval(self, after: threading.Thread | None = None) -> threading.Thread:
        """Build the index in the background, so the first question does not wait for it;
        `after`: a loading thread to wait for first (two threads must not import
        transformers at once)."""
        thread = threading.Thread(
            target=self._quiet_retriever, args=(after,), name="medchat-index", daemon=True
        )
        thread.start()
        return thread

    def _quiet_retriever(self, after: threading.Thread | None = None) -> None:
        if after is not None:
            after.join()
        try:
            self.retriever()
        except MedchatError as err:
            log.warning("%s", err)

    def _prompt_kwargs(self, passages) -> dict[str, Any]:
        return {
            "system": self.style.system,
            "passages": passages,
            "sources_instruction": self.style.sources_instruction,
        }

    # -- what callers show --------------------------------------------------------------------
    @property
    def has_adapter(self) -> bool:
        return self.backend.has_adapter

    @property
    def profile(self):
        return self.backend.profile

    @property
    def adapter(self) -> str | None:
        return self.backend.adapter

    def info(self) -> dict[str, Any]:
        return self.backend.info()

    def default_params(self) -> GenerationParams:
        s = self.settings
        return GenerationParams(
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            repetition_penalty=s.repetition_penalty,
        )

    # -- steps 1-3: clean, triage, build messages ---------------------------------------------
    def triage(self, message: str, earlier: Sequence[str] | None = None) -> RedFlag | None:
        """The red flag of a (cleaned) message read with the person's earlier messages."""
        return classify(message, list(earlier or ()))

    def prepare(
        self,
        message: Any,
        history: Iterable[Any] | None = None,
        params: GenerationParams | None = None,
        *,
        pair: bool = False,
        general_info: bool = False,
        earlier: Sequence[str] | None = None,
    ) -> Turn:
        """Clean and triage one message, then build its prompt.

        A message that is empty or too long is a MedchatError. Triage reads the message with
        the person's earlier messages (`earlier`, most recent last; by default the user turns
        of `history`). A red flag that withholds the answer (self-harm) gives a Turn without
        messages; an emergency notice holds the answer (`Turn.held`); an urgent notice (see a
        doctor within a day) goes above the answer and never holds it. With `general_info`
        after an emergency notice, the Turn carries the NIH passages found for the message
        (`reading`) and no messages: the model does not answer. A prompt that cannot be built
        (too long, no adapter for a pair) gives a Turn with `error`, so the notice still shows.
        """
        text = clean_message(content_text(message), self.settings.max_input_chars)
        if earlier is None:
            earlier = user_turns(history)
        from medchat.metrics import request_vectors

        # Triage and retrieval embed the same question with the same model: once per request.
        with request_vectors():
            return self._prepare(text, history, params, pair, general_info, earlier)

    def _prepare(self, text, history, params, pair, general_info, earlier) -> Turn:
        flag = self.triage(text, earlier)
        params = params or self.default_params()
        if flag is not None and not flag.allow_answer:
            return Turn(text, flag, params)
        turn = Turn(text, flag, params, general_info=general_info)
        if turn.general:  # NIH text only: retrieved whatever the adapter's prompt is
            try:
                return replace(turn, reading=self.retrieve(text, earlier))
            except MedchatError as err:
                return replace(turn, error=str(err))
        sources = reading = None
        try:
            if pair and not self.has_adapter:
                raise MedchatError(
                    "Compare needs a fine-tuned adapter; start the app with --adapter."
                )
            found = self.retrieve(text, earlier)
            if found is not None:
                pointers = tuple(h for h in found if not covered(h))
                if self.grounded:
                    sources = tuple(h for h in found if covered(h))
                    reading = pointers
                else:
                    reading = found
            while True:
                try:
                    messages = self.backend.messages(
                        text,
                        history,
                        max_new_tokens=params.max_new_tokens,
                        **self._prompt_kwargs(sources),
                    )
                    break
                except MedchatError:
                    if not sources:
                        raise
                    # The least relevant passage gives way first (and is still shown).
                    sources, reading = sources[:-1], (sources[-1], *(reading or ()))
        except MedchatError as err:
            return replace(turn, error=str(err), sources=sources, reading=reading)
        return replace(
            turn,
            messages=messages,
            sources=sources,
            reading=reading,
            prompt_style=self.prompt_style(sources is not None).id,
        )

    # -- steps 4-5: generate, sanitise --------------------------------------------------------
    def stream(self, turn: Turn, *, tuned: bool = True, markdown: bool = True) -> Iterator[str]:
        """The answer as it grows; sanitised for markdown display unless `markdown` is False.

        Closing this generator (Stop, a closed tab, Ctrl-C) stops the generation.
        """
        self._require(turn)
        with closing(self.backend.stream(turn.messages, turn.params, tuned=tuned)) as texts:
            for text in texts:
                yield output(text, markdown)

    def hit_limit(self, turn: Turn, answer: str) -> bool:
        """Whether `answer`, the raw text streamed for `turn`, used its whole token budget
        (max_new_tokens), so the model was cut off rather than done.

        A stream carries text only, so the text is encoded again with the backend's tokenizer:
        an answer that ended on its own is at least one token short of the budget (the end
        token is not shown).
        """
        if not answer:
            return False
        ids = self.backend.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return len(ids) >= turn.params.max_new_tokens

    def stream_pair(self, turn: Turn, *, markdown: bool = True) -> Iterator[tuple[str, str]]:
        """(base, tuned) answers as both grow, each sanitised as `stream` sanitises a lone
        answer (for markdown display unless `markdown` is False).

        Closing this generator stops both generations.
        """
        self._require(turn)
        with closing(self.backend.stream_pair(turn.messages, turn.params)) as pairs:
            for base, tuned in pairs:
                yield output(base, markdown), output(tuned, markdown)

    def generate_batch(
        self,
        questions: Sequence[str],
        params: GenerationParams | None = None,
        *,
        sides: Sequence[str] = ("base", "tuned"),
        sources: Sequence[Sequence[Any]] | None = None,
    ) -> list[dict[str, Generation]]:
        """Answers to dataset questions for scoring: prompt as training built it, no triage.

        Evaluation measures the model itself, so red flags neither stop nor change these.
        `sources`: the passages of each question (evaluation retrieves them from its own
        leak-free index), or None for prompts without sources; a page the library only points
        to (`covered` False) is left out of the prompt.
        """
        params = params or self.default_params()
        if sources is not None and len(sources) != len(questions):
            raise ValueError("generate_batch needs one list of sources per question")
        if sources is not None:
            sources = [[h for h in hits if covered(h)] for hits in sources]
        conversations = [
            self.backend.messages(
                q,
                max_new_tokens=params.max_new_tokens,
                **self._prompt_kwargs(None if sources is None else list(sources[i])),
            )
            for i, q in enumerate(questions)
        ]
        return self.backend.generate_batch(conversations, params, sides=sides)

    def cancel(self) -> None:
        self.backend.cancel()

    def close(self) -> None:
        """Stop every generation and wait for it to end (the local model's threads, a server's
        open requests)."""
        self.backend.close()

    def _require(self, turn: Turn) -> None:
        if turn.messages is None:
            raise MedchatError(turn.error or "This message gets no model answer.")
        if turn.held:
            raise MedchatError(
                "The answer is held after an emergency notice; ask for general information."
            )


def output(text: str, markdown: bool) -> str:
    """A backend's answer as the pipeline gives it out: made safe for markdown display (no
    HTML, no remote images, no script links), or raw for a terminal or for storing."""
    return sanitize_markdown(text) if markdown else text


def warm_up_triage() -> threading.Thread:
    """Load the triage embedder and the story judge in the background, so the first message
    does not wait for them.

    Call it once the backend is loaded: importing transformers from two threads at once can
    find it half-imported.
    """
    from medchat import safety
    from medchat.safety.judge import shipped

    def load() -> None:
        if safety.embedder() is not None:
            shipped()

    thread = threading.Thread(target=load, name="medchat-triage-load", daemon=True)
    thread.start()
    return thread


def user_turns(history: Iterable[Any] | None) -> list[str]:
    """Every message the person sent, oldest first, answered or not (for triage)."""
    out = []
    for item in history or ():
        if isinstance(item, dict):
            if item.get("role") == "user":
                out.append(content_text(item.get("content")))
        else:
            out.append(content_text(item[0]))
    return [t.strip() for t in out if t and t.strip()]


def as_pipeline(source, settings) -> Pipeline:
    """A Pipeline over `source`: a Pipeline, a backend, or an in-process Engine (or stand-in)."""
    if isinstance(source, Pipeline):
        return source
    from medchat.backends import Backend

    if isinstance(source, Backend):
        return Pipeline(source, settings)
    from medchat.backends.local import LocalBackend

    return Pipeline(LocalBackend(source), settings)
