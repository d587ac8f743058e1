"""The browser app: one module per tab, put together by `build_app`.

    demo = build_app(pipeline, settings, store=ReviewStore(settings.reviews_db))
    demo.queue(default_concurrency_limit=settings.concurrency).launch(**launch_style())

`pipeline` is a medchat.pipeline.Pipeline (the one request path over a backend); a backend, or
an in-process Engine (or a stand-in with its methods), is wrapped in one. The UI never touches
torch, a tokenizer or a server directly.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from medchat.settings import REPO_ROOT, Settings
from medchat.ui.chat import build_chat_tab
from medchat.ui.common import ReferenceBook, disclaimer_markdown, header_markdown
from medchat.ui.compare import build_compare_tab
from medchat.ui.evaluate import build_evaluate_tab
from medchat.ui.review import build_review_tab

CSS_FILE = REPO_ROOT / "assets" / "style.css"

__all__ = ["build_app", "launch_style", "theme"]


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="teal", secondary_hue="sky", neutral_hue="slate")


def launch_style(css_file: Path = CSS_FILE) -> dict:
    """The theme and css for `launch()` (Gradio 6 takes them there, not in Blocks)."""
    css = css_file.read_text(encoding="utf-8") if css_file.is_file() else ""
    return {"theme": theme(), "css": css}


def build_app(pipeline, settings: Settings, store) -> gr.Blocks:
    """The whole app as a gr.Blocks: header, disclaimer, and the four tabs."""
    from medchat.pipeline import as_pipeline

    pipeline = as_pipeline(pipeline, settings)
    refs = ReferenceBook(pipeline, settings)
    with gr.Blocks(title="medchat: medical Q&A assistant") as demo:
        gr.Markdown(header_markdown(pipeline.info()), elem_id="header")
        gr.Markdown(disclaimer_markdown(), elem_id="disclaimer", elem_classes=["disclaimer"])
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                build_chat_tab(pipeline, settings)
            with gr.Tab("Compare", id="compare"):
                build_compare_tab(pipeline, settings, store, refs)
            with gr.Tab("Evaluate", id="evaluate"):
                build_evaluate_tab(demo, pipeline, settings, refs)
            with gr.Tab("Review", id="review"):
                build_review_tab(demo, pipeline, settings, store, refs)
    return demo
