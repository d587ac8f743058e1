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

from medchat.access import Access, anonymous_id
from medchat.references import ReferenceBook
from medchat.settings import REPO_ROOT, Settings
from medchat.ui.chat import build_chat_tab
from medchat.ui.chat_messages import NO_THUMBS_CSS
from medchat.ui.common import disclaimer_markdown, header_markdown
from medchat.ui.compare import build_compare_tab
from medchat.ui.evaluate import build_evaluate_tab
from medchat.ui.review import build_review_tab

CSS_FILE = REPO_ROOT / "assets" / "style.css"

__all__ = ["build_app", "launch_style", "theme"]


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="teal", secondary_hue="sky", neutral_hue="slate")


def launch_style(css_file: Path = CSS_FILE) -> dict:
    """The theme and css for `launch()` (Gradio 6 takes them there, not in Blocks): the css
    file, and the rule that keeps thumbs off the chat's own messages."""
    css = css_file.read_text(encoding="utf-8") if css_file.is_file() else ""
    css += "\n" + NO_THUMBS_CSS
    return {"theme": theme(), "css": css}


def sign_in_markdown(access: Access, request=None, profile=None) -> str:
    """One line on who is signed in and what that allows; "" when sign-in is off."""
    if not access.enabled:
        return ""
    name = access.signed_in(request, profile)
    if name:
        role = " (organiser)" if access.is_organiser(request, profile) else ""
        out = " · [Sign out](/logout)" if access.mode == "password" else ""
        return f"Signed in as **{name}**{role}: you may vote and rate.{out}"
    return "Chat is open to everyone. **Sign in** to vote, rate and start evaluation runs."


def build_app(pipeline, settings: Settings, store, access: Access | None = None) -> gr.Blocks:
    """The whole app as a gr.Blocks: header, disclaimer, and the four tabs.

    `access` (medchat.access) says who may vote, rate, export and start runs; by default it
    comes from the settings (MEDCHAT_AUTH, or the Space's OAuth).
    """
    from medchat.pipeline import as_pipeline

    access = access or Access.from_settings(settings)
    pipeline = as_pipeline(pipeline, settings)
    refs = ReferenceBook(pipeline, settings)
    with gr.Blocks(title="medchat: medical Q&A assistant") as demo:
        gr.Markdown(header_markdown(pipeline.info()), elem_id="header")
        gr.Markdown(disclaimer_markdown(), elem_id="disclaimer", elem_classes=["disclaimer"])
        if access.enabled:
            with gr.Row(elem_id="sign-in-row"):
                signed = gr.Markdown(elem_id="sign-in")
                if access.mode == "oauth":
                    gr.LoginButton(size="sm", scale=0)

            def who(request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
                return sign_in_markdown(access, request, profile)

            demo.load(who, None, [signed], api_visibility="undocumented")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                build_chat_tab(
                    pipeline,
                    settings,
                    store=store,
                    # A thumb is open to everyone, like the chat: signed-in name, else an
                    # anonymous id of the browser session.
                    reviewer_of=lambda request, profile: (
                        access.reviewer(request, profile) or anonymous_id(request.session_hash)
                    ),
                )
            with gr.Tab("Compare", id="compare"):
                build_compare_tab(pipeline, settings, store, refs, access)
            with gr.Tab("Evaluate", id="evaluate"):
                build_evaluate_tab(demo, pipeline, settings, refs, access)
            with gr.Tab("Review", id="review"):
                build_review_tab(demo, pipeline, settings, store, refs, access)
    return demo
