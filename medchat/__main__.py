"""The command line: ask one question, put base and fine-tuned answers side by side, or describe
the loaded model.

    python -m medchat chat "What are the symptoms of glaucoma?"
    python -m medchat compare "What is glaucoma?" --max-new-tokens 128
    python -m medchat info --profile smollm2-135m --adapter none
    python -m medchat serve --port 8000          # vLLM: base + adapter, OpenAI-compatible
    python -m medchat chat "What is asthma?" --backend openai --server-url http://127.0.0.1:8000/v1

Every flag may also come from its MEDCHAT_* environment variable (see medchat.settings); a flag
wins over the variable. A problem the user can fix prints `error: <what to change>` and exits 2;
Ctrl-C stops generation and exits 130.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TextIO

from medchat.backends import add_backend_flags, backend_overrides
from medchat.errors import MedchatError
from medchat.presenter import (
    ARCHIVED,
    POINTER,
    WARNING_HEAD,
    notice_kind,
    present,
    present_general_info,
)
from medchat.profiles import PROFILE_NAMES
from medchat.safety import DISCLAIMER
from medchat.settings import Settings

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


# -- arguments --------------------------------------------------------------------------------
def _model_flags() -> argparse.ArgumentParser:
    """The flags every command takes. Unset flags stay unset, so MEDCHAT_* variables apply."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("model and generation")
    sup = argparse.SUPPRESS
    group.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        default=sup,
        help="which base model to load: smollm2-135m (embedded, CPU), mistral-7b (4-bit, needs "
        "CUDA), or auto (mistral-7b when a CUDA GPU is visible, else smollm2-135m; the default)",
    )
    group.add_argument(
        "--adapter",
        metavar="PATH_OR_ID",
        default=sup,
        help="LoRA adapter to attach: a folder written by training or a hub id (org/name); "
        "'none' for the base model alone (default: the profile's shipped adapter, if any)",
    )
    group.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        default=sup,
        help="stop an answer after N generated tokens (default 256)",
    )
    group.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        default=sup,
        help="sampling temperature between 0 and 2; 0 decodes greedily (the default)",
    )
    group.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=sup,
        help="folder for the embedded model's converted copy (default ~/.cache/medchat)",
    )
    group.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default=sup,
        help="where the model runs (default auto: cuda when available, else cpu)",
    )
    add_backend_flags(flags)
    return flags


def build_parser() -> argparse.ArgumentParser:
    flags = _model_flags()
    parser = argparse.ArgumentParser(
        prog="python -m medchat",
        description="Medical question answering with a LoRA-fine-tuned instruct model. Answers "
        "are not medical advice.",
        epilog="Each flag can also be set by its environment variable, e.g. MEDCHAT_PROFILE, "
        "MEDCHAT_ADAPTER, MEDCHAT_MAX_NEW_TOKENS; a flag wins over the variable.",
        parents=[flags],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chat = commands.add_parser(
        "chat",
        parents=[flags],
        help="stream the answer to one question",
        description="Stream the answer to QUESTION, then print the medical disclaimer.",
    )
    chat.add_argument("question", metavar="QUESTION", help="the question, quoted")
    chat.add_argument(
        "--general-info",
        action="store_true",
        help="after an emergency notice, still print the model's answer, headed as general "
        "information (without it the notice is all)",
    )
    compare = commands.add_parser(
        "compare",
        parents=[flags],
        help="answer with the base and the fine-tuned model",
        description="Answer QUESTION with the base model and with the fine-tuned adapter (one "
        "batched generation) and print both, labelled. Needs an adapter.",
    )
    compare.add_argument("question", metavar="QUESTION", help="the question, quoted")
    compare.add_argument(
        "--general-info",
        action="store_true",
        help="after an emergency notice, still compare the answers, headed as general information",
    )
    commands.add_parser(
        "info",
        parents=[flags],
        help="load the model and describe it",
        description="Load the model the flags select and print its profile, base model, where "
        "the weights came from, the adapter, device, cache folder and dtype.",
    )
    serve = commands.add_parser(
        "serve",
        parents=[flags],
        help="start a vLLM server for the profile and adapter",
        description="Serve the profile's base model and its adapter (a LoRA module named "
        "'medchat') with vLLM's OpenAI-compatible API, wait until it is ready, print the URL to "
        "pass to app.py --backend openai --server-url, and run until Ctrl-C.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    serve.add_argument(
        "--max-model-len",
        type=int,
        default=2048,
        metavar="N",
        help="longest prompt + answer in tokens (default 2048; capped at the model's context)",
    )
    serve.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="weights dtype (default: float32 for the embedded model on CPU, else bfloat16)",
    )
    serve.add_argument(
        "--tensor-parallel-size",
        "--tp",
        type=int,
        default=1,
        metavar="N",
        help="split the model over N GPUs (CUDA only; default 1)",
    )
    serve.add_argument(
        "--kv-cache-gib",
        type=int,
        default=2,
        metavar="GIB",
        help="KV cache size on CPU in GiB (VLLM_CPU_KVCACHE_SPACE; default 2)",
    )
    serve.add_argument("--python", metavar="PATH", help="the interpreter that has vLLM")
    serve.add_argument(
        "--log", type=Path, metavar="FILE", help="write vLLM's output to FILE (default: here)"
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        profile=getattr(args, "profile", None),
        adapter=getattr(args, "adapter", None),
        max_new_tokens=getattr(args, "max_new_tokens", None),
        temperature=getattr(args, "temperature", None),
        cache_dir=getattr(args, "cache_dir", None),
        device=getattr(args, "device", None),
        **backend_overrides(args),
    )


# -- commands ---------------------------------------------------------------------------------
def write_stream(texts: Iterator[str], out: TextIO) -> str:
    """Print a growing answer: only the new characters of each step, flushed at once."""
    shown = ""
    for text in texts:
        # The engine yields the whole answer so far; a decoder that revises an earlier character
        # (very rare) cannot be unprinted, so printing always continues from the length shown.
        if len(text) > len(shown):
            out.write(text[len(shown) :])
            out.flush()
        shown = text
    return shown


ALERT_RULE = "!" * 72


def alert_box(notice: str) -> str:
    """A red-flag notice as a terminal alert: ruled off, bold marks dropped, wrapped."""
    import textwrap

    text = notice.replace("**", "")
    lines = textwrap.wrap(text, width=68)
    return "\n".join([ALERT_RULE, *(f"!! {line}" for line in lines), ALERT_RULE])


def quiet_notice(notice: str) -> str:
    """An urgent notice as a plain paragraph (bold marks dropped, wrapped): not an alert."""
    import textwrap

    return "\n".join(textwrap.wrap(notice.replace("**", ""), width=72))


def prepare(pipeline, question: str, out: TextIO, *, pair=False, general_info=False):
    """The pipeline's Turn for a question, or None when the model must not answer it now.

    The question is cleaned and checked for an emergency first: the notice is printed as an
    alert before anything else. After an emergency notice no answer is given; with
    --general-info the NIH passages on the topic are printed word for word with their links
    instead (never text the model wrote). For self-harm the notice is all.
    """
    turn = pipeline.prepare(question, pair=pair, general_info=general_info)
    if notice_kind(turn.flag) == "quiet":  # urgent: a paragraph, then the answer
        out.write(f"{quiet_notice(turn.flag.notice)}\n\n")
    elif turn.flag is not None:
        out.write(f"{alert_box(turn.flag.notice)}\n\n")
        out.flush()
        if not turn.flag.allow_answer:
            out.write(f"{DISCLAIMER}\n")
            return None
        if turn.held:
            out.write(
                "No answer is shown, so that nothing here delays getting help. For general "
                "information on this topic (not advice for this situation), run the same "
                f"command with --general-info.\n\n{DISCLAIMER}\n"
            )
            return None
    if turn.error:
        raise MedchatError(turn.error)
    if turn.general:
        out.write(general_info_text(present_general_info(turn)))
        out.write(f"\n\n{DISCLAIMER}\n")
        out.flush()
        return None
    return turn


def _link_text(item) -> str:
    link = f" <{item.url}>" if item.url else ""
    return link + (f" {ARCHIVED}" if item.archived else "")


def warning_text(view) -> str:
    """The line before an answer written without NIH passages in its prompt ("" if none)."""
    return f"!! {WARNING_HEAD}: {view.warning}\n\n" if view.warning else ""


def under_answer_text(view) -> str:
    """The lists under an answer as plain text: "" when there is none."""
    lines = []
    for group in view.groups:
        lines += ["", "", f"{group.heading}:"]
        for item in group.items:
            if not item.covered:
                lines.append(f"  - {POINTER} {item.title} on {item.pointer_site}{_link_text(item)}")
                continue
            numbers = f"[{', '.join(str(n) for n in item.numbers)}] " if item.numbers else "- "
            lines.append(f"  {numbers}{item.label}{_link_text(item)}")
    return "\n".join(lines)


def general_info_text(view) -> str:
    """General information after an emergency notice, as plain text: each NIH page with its
    link and its passages word for word, or the sentence that there is no NIH text."""
    parts = [view.heading.replace("**", "")]
    for group in view.groups:
        parts.append(f"{group.heading}:")
        for item in group.items:
            if not item.covered:
                parts.append(f"{POINTER} {item.title} on {item.pointer_site}{_link_text(item)}")
                continue
            texts = "\n\n".join(f"  {' '.join(t.split())}" for t in item.texts)
            parts.append(f"{item.label}{_link_text(item)}\n{texts}")
    if view.note:
        parts.append(view.note)
    return "\n\n".join(parts)


def run_chat(pipeline, question: str, out: TextIO, *, general_info: bool = False) -> None:
    turn = prepare(pipeline, question, out, general_info=general_info)
    if turn is None:
        return
    out.write(warning_text(present(turn)))  # before the answer, where the eye lands
    with closing(pipeline.stream(turn, markdown=False)) as stream:
        answer = write_stream(stream, out)
    out.write(under_answer_text(present(turn, answer)))
    out.write(f"\n\n{DISCLAIMER}\n")
    out.flush()


def run_compare(pipeline, question: str, out: TextIO, *, general_info: bool = False) -> None:
    """Both answers to one prompt: the one the adapter was trained with."""
    turn = prepare(pipeline, question, out, pair=True, general_info=general_info)
    if turn is None:
        return
    out.write(warning_text(present(turn)))
    with closing(pipeline.stream_pair(turn, markdown=False)) as pairs:
        last = deque(pairs, maxlen=1)  # the final (base, tuned) pair
    base, tuned = last[0] if last else ("", "")
    info = pipeline.info()
    out.write(f"=== base model ({info['base_model']}) ===\n{base}\n\n")
    out.write(f"=== fine-tuned ({info['adapter']}) ===\n{tuned}")
    out.write(under_answer_text(present(turn, [base, tuned])))
    out.write(f"\n\n{DISCLAIMER}\n")
    out.flush()


def run_info(pipeline, settings: Settings, out: TextIO) -> None:
    info = pipeline.info()
    rows = [
        ("backend", info.get("backend", "local")),
        ("profile", info["profile"]),
        ("base model", info["base_model"]),
        ("base source", info["base_source"]),
        ("adapter", info["adapter"]),
        ("device", info["device"]),
        ("cache dir", str(settings.cache_dir)),
        ("dtype", info["dtype"]),
        ("load seconds", info["load_seconds"]),
    ]
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        out.write(f"{name + ':':<{width}}{value}\n")
    out.flush()


def _require_adapter(settings: Settings) -> None:
    """Compare needs an adapter: say so before spending time on loading the model."""
    from medchat.profiles import resolve_profile

    if settings.backend == "openai":
        return  # the server says whether it serves one, at connection

    profile = resolve_profile(settings.profile)
    if settings.adapter_for(profile.name) is None:
        raise MedchatError(
            f"Compare needs a fine-tuned adapter and profile {profile.name} has none here; "
            "pass --adapter PATH_OR_ID."
        )


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Start vLLM, wait for it, print the URL, and run until Ctrl-C or until vLLM exits."""
    from medchat.serve import Server, describe, find_python, serve_config

    config = serve_config(
        settings,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        tensor_parallel_size=args.tensor_parallel_size,
        kv_cache_gib=args.kv_cache_gib,
    )
    server = Server(config, find_python(args.python, config.device), log_path=args.log)
    print(f"starting vLLM:\n{describe(config)}", file=sys.stderr)
    with server:
        url = server.wait_ready()
        print(f"ready: {url}", flush=True)
        print(
            f"chat with it: python app.py --backend openai --server-url {url}",
            file=sys.stderr,
            flush=True,
        )
        try:
            return server.process.wait() and EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("\nstopping vLLM...", file=sys.stderr)
            return 0


def _setup_logging() -> None:
    # Our own INFO messages (the one-time model conversion) go to stderr; libraries stay at
    # their own levels.
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logging.getLogger("medchat").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    out = sys.stdout
    pipeline = None
    try:
        # 1. Settings first: a bad flag fails before any model is loaded.
        settings = settings_from_args(args)
        if args.command == "serve":
            return run_serve(args, settings)
        if args.command == "compare":
            _require_adapter(settings)
        # 2. Load the model or connect to the server (an adapter is checked before the slow
        #    base load; a server's URL and model names at connection).
        from medchat.backends import make_backend
        from medchat.pipeline import Pipeline

        pipeline = Pipeline(make_backend(settings), settings)
        # 3. Run the command.
        if args.command == "chat":
            run_chat(pipeline, args.question, out, general_info=args.general_info)
        elif args.command == "compare":
            run_compare(pipeline, args.question, out, general_info=args.general_info)
        else:
            run_info(pipeline, settings, out)
    except MedchatError as err:
        out.flush()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        # Closing the stream on the way out stopped generation; close() waits until its
        # thread has left torch, so the interpreter never shuts down under a running model.
        if pipeline is not None:
            pipeline.close()
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
