"""The Evaluate tab: browse evaluation runs, or start a small one with the loaded model.

A run folder (docs/eval.md) holds results.jsonl and summary.json; this tab shows the summary
as metric cards, the similarity plot, a searchable per-question table and, for a selected
question, the reference and both answers; with a statement set (K-QA), under each answer the
judge's verdict on every statement. A run still being written shows what it has so far.

API: `/eval_runs` lists runs, `/eval_load` (run) shows one, `/eval_table` (run, search, qtype,
sort) filters its table, `/eval_start` (n, max_new_tokens) starts a run.

The tab's layout and wiring live here; its handlers in medchat.ui.evaluate_handlers, what it
shows of a run (cards, table, answers) in medchat.ui.evaluate_views, and the run folders it
reads and the runs it starts in medchat.ui.evaluate_runs. The names they had here still import
from here.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from medchat.access import Access
from medchat.settings import Settings
from medchat.ui.common import ReferenceBook
from medchat.ui.evaluate_handlers import EvaluateHandlers
from medchat.ui.evaluate_runs import (
    RUN_MAX_NEW_TOKENS,
    RUN_QUESTIONS,
    RunLibrary,
    run_batch_size,
    run_config,
    run_unavailable,
)
from medchat.ui.evaluate_views import (
    ALL_TYPES,
    MIN_CI_N,
    RUN_DETAILS,
    SORTS,
    TABLE_COLUMNS,
    VERDICT_SHOWN,
    cards_html,
    item_markdown,
    qtype_choices,
    run_details_html,
    statement_cards,
    table_frame,
    verdicts_markdown,
)

__all__ = [
    "ALL_TYPES",
    "MIN_CI_N",
    "RUN_DETAILS",
    "RUN_MAX_NEW_TOKENS",
    "RUN_QUESTIONS",
    "SORTS",
    "TABLE_COLUMNS",
    "VERDICT_SHOWN",
    "RunLibrary",
    "build_evaluate_tab",
    "cards_html",
    "item_markdown",
    "qtype_choices",
    "run_batch_size",
    "run_config",
    "run_details_html",
    "run_unavailable",
    "statement_cards",
    "table_frame",
    "verdicts_markdown",
]


def build_evaluate_tab(
    demo: gr.Blocks,
    pipeline,
    settings: Settings,
    refs: ReferenceBook,
    access: Access | None = None,
) -> None:
    """The Evaluate tab's content; call inside a `gr.Tab`. Browsing runs is open to everyone;
    starting one needs a signed-in reviewer when sign-in is on (medchat.access)."""
    access = access or Access()
    library = RunLibrary(*settings.run_dirs)
    handlers = EvaluateHandlers(library, pipeline, settings, refs, access)
    ui = _run_view(settings, library.names())
    _start_form(ui, pipeline)
    _wire_evaluate(demo, ui, handlers)


def _run_view(settings: Settings, names: list[str]) -> SimpleNamespace:
    """The run picker, its cards and plot, the per-question table and one question's answers."""
    ui = SimpleNamespace()
    with gr.Row():
        ui.run = gr.Dropdown(
            names,
            value=names[0] if names else None,
            label="Evaluation run",
            # Named, not shown as a path: on a Space that is the server's file system.
            info="the app's run folders (runs/eval, or MEDCHAT_RUNS_DIR) and the shipped runs",
            scale=4,
            elem_id="eval-run",
            allow_custom_value=True,  # runs appear while the app runs; names are checked
        )
        ui.refresh = gr.Button("Refresh list", scale=1)
    ui.status = gr.Markdown()
    ui.cards = gr.HTML(elem_id="eval-cards")
    ui.plot = gr.Image(
        label="Cosine similarity to the reference", type="filepath", interactive=False
    )
    with gr.Row():
        ui.search = gr.Textbox(label="Search questions", placeholder="word or key", scale=3)
        ui.qtype = gr.Dropdown(
            [ALL_TYPES], value=ALL_TYPES, label="Question type", scale=2, allow_custom_value=True
        )
        ui.sort = gr.Dropdown(list(SORTS), value=SORTS[0], label="Sort by", scale=2)
    ui.table = gr.Dataframe(
        headers=TABLE_COLUMNS,
        interactive=False,
        wrap=True,
        max_height=420,
        label="Per question (click a row for the answers)",
        elem_id="eval-table",
        column_widths=["12%", "12%", "8%", "8%", "10%", "50%"],
    )
    ui.item_question = gr.Markdown()
    with gr.Accordion("Reference answer", open=True):
        ui.item_reference = gr.Markdown()
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("#### Base model")
            ui.item_base = gr.Markdown(elem_classes=["answer"])
        with gr.Column():
            gr.Markdown("#### Fine-tuned model")
            ui.item_tuned = gr.Markdown(elem_classes=["answer"])
    ui.download = gr.DownloadButton("Download results CSV", visible=False)
    return ui


def _start_form(ui: SimpleNamespace, pipeline) -> None:
    """The "Start a small evaluation run" accordion, its sliders, button and progress line
    (added to `ui`); when this app cannot start runs, it says why and the button is off."""
    blocked = run_unavailable(pipeline)
    with gr.Accordion("Start a small evaluation run", open=False):
        gr.Markdown(
            blocked
            or "Answers a seeded sample of the adapter's held-out test questions with both "
            "models (greedy), scores them against the reference answers, and saves a new run "
            "folder. While it runs, chat and compare wait for the model."
        )
        with gr.Row():
            ui.n_items = gr.Slider(
                1, 64, value=RUN_QUESTIONS, step=1, label="Questions", elem_id="eval-questions"
            )
            ui.n_tokens = gr.Slider(
                16,
                512,
                value=RUN_MAX_NEW_TOKENS,
                step=16,
                label="Max new tokens",
                info=f"{RUN_MAX_NEW_TOKENS} as in `python -m eval`; fewer cut answers short",
                elem_id="eval-max-tokens",
            )
        with gr.Row(equal_height=True):
            ui.start = gr.Button(
                "Start run",
                variant="primary",
                interactive=blocked is None,
                scale=1,
                elem_id="eval-start",
            )
            # The run's progress shows here, beside the button, question by question.
            ui.run_status = gr.Markdown(elem_id="eval-run-status", scale=3, min_height=64)


def _wire_evaluate(demo: gr.Blocks, ui: SimpleNamespace, handlers: EvaluateHandlers) -> None:
    """Refresh, pick a run, filter its table, click a row, start a run; the newest run shows
    when the page opens."""
    shown_outputs = [ui.status, ui.cards, ui.plot, ui.qtype, ui.table, ui.download]
    item_outputs = [ui.item_question, ui.item_reference, ui.item_base, ui.item_tuned]
    ui.refresh.click(handlers.refresh_runs, [ui.run], [ui.run], api_name="eval_runs")
    ui.run.change(handlers.show_run, [ui.run], shown_outputs, api_name="eval_load")
    # The answers shown under the table belong to the run that was shown: cleared with it.
    ui.run.change(
        lambda: ("", "", "", ""), None, item_outputs, queue=False, api_visibility="undocumented"
    )
    gr.on(
        [ui.search.submit, ui.qtype.change, ui.sort.change],
        handlers.filter_table,
        [ui.run, ui.search, ui.qtype, ui.sort],
        [ui.table],
        api_name="eval_table",
    )
    ui.table.select(handlers.select_item, [ui.run], item_outputs, api_visibility="undocumented")
    ui.start.click(
        handlers.start_run,
        [ui.n_items, ui.n_tokens],
        [ui.run, ui.run_status],
        api_name="eval_start",
        concurrency_limit=1,
        show_progress_on=[ui.run_status],
    )
    # Show the newest run when the page opens.
    demo.load(handlers.show_run, [ui.run], shown_outputs, api_visibility="undocumented")
