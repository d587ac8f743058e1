"""Tokens/s through the browser app's API vs the engine's own stream.

    python -m bench --only app

The app (medchat.ui.build_app) runs in this process on 127.0.0.1 with the same engine; a
gradio_client streams `/chat` (message, temperature, top_p, max_new_tokens, use_tuned), a new
client per question (a client session is one conversation). The answer length is fixed, so the
ratio of times is the ratio of tokens/s.
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

from bench.common import FixedLengthEngine, alternate, log, median, paired_ratio, params


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_app(
    engine: FixedLengthEngine, question: str, *, new_tokens: int = 128, repeats: int = 2
) -> dict:
    """app_stream_ratio: engine.stream time ÷ time for the same answer through `/chat`."""
    from gradio_client import Client

    from medchat.reviews import ReviewStore
    from medchat.settings import Settings
    from medchat.ui import build_app

    p = params(new_tokens)
    messages = engine.messages(question, max_new_tokens=new_tokens)
    with tempfile.TemporaryDirectory(prefix="medchat-bench-app-") as tmp:
        settings = Settings.from_env(
            profile=engine.profile.name,
            max_new_tokens=new_tokens,
            temperature=0.0,
            repetition_penalty=p.repetition_penalty,
            host="127.0.0.1",
            port=free_port(),
            data_dir=Path(tmp),
        )
        store = ReviewStore(settings.reviews_db)
        demo = build_app(engine, settings, store=store)
        demo.queue(default_concurrency_limit=1).launch(
            server_name=settings.host,
            server_port=settings.port,
            prevent_thread_lock=True,
            quiet=True,
        )
        try:
            url = f"http://{settings.host}:{settings.port}/"
            first: list[float] = []
            texts: dict[str, str] = {}

            def through_app() -> float:
                # A fresh client per question: one client session is one conversation, so a
                # reused client would send every earlier exchange as history.
                client = Client(url, verbose=False)
                start = time.perf_counter()
                job = client.submit(question, 0.0, p.top_p, new_tokens, True, api_name="/chat")
                seen = False
                for _ in job:
                    if not seen:
                        first.append(time.perf_counter() - start)
                        seen = True
                texts["app"] = job.result()
                return time.perf_counter() - start

            def direct() -> float:
                start = time.perf_counter()
                for text in engine.stream(messages, p):
                    texts["engine"] = text
                return time.perf_counter() - start

            direct()
            through_app()  # warm-up: the client's first call opens its connections
            first.clear()
            log(f"app: {repeats} repeats of engine.stream / the app's /chat, {new_tokens} tokens")
            seconds = alternate({"engine": direct, "app": through_app}, repeats)
        finally:
            demo.close()
            close = getattr(store, "close", None)
            if close is not None:
                close()
    return {
        "app_stream_ratio": paired_ratio(seconds["engine"], seconds["app"]),
        "app_first_update_s_median": median(first),
        # The app escapes "<" in model output (sanitize_markdown); undo that to compare.
        "app_text_contains_engine_text": texts.get("engine", "")
        in texts.get("app", "").replace("&lt;", "<"),
        "app_tokens": new_tokens,
        "texts": texts,
        "seconds": {name: [round(s, 3) for s in v] for name, v in seconds.items()},
    }
