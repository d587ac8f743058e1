"""The Evaluate tab's handlers: list the runs, show one, filter its table, show one question,
start a run.

`EvaluateHandlers` holds what they share (the run library, the pipeline, the settings) and
medchat.ui.evaluate wires its methods to the tab's components. A method's docstring would be
its endpoint's API description, so they have none; the tab's docstring lists the API.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from medchat.access import Access
from medchat.errors import MedchatError
from medchat.evaluation import run_evaluation
from medchat.references import ReferenceBook
from medchat.settings import Settings
from medchat.statements import run_judge
from medchat.ui.common import esc
from medchat.ui.evaluate_runs import RunLibrary, run_config, run_unavailable
from medchat.ui.evaluate_views import (
    ALL_TYPES,
    SORTS,
    TABLE_COLUMNS,
    cards_html,
    item_markdown,
    qtype_choices,
    questions_text,
    table_frame,
)


class EvaluateHandlers:
    """The Evaluate tab's handlers over one run library; starting a run checks `access`."""

    def __init__(
        self,
        library: RunLibrary,
        pipeline,
        settings: Settings,
        refs: ReferenceBook,
        access: Access,
    ):
        self.library = library
        self.pipeline = pipeline
        self.settings = settings
        self.refs = refs
        self.access = access

    def refresh_runs(self, current: str | None):
        names = self.library.names()
        value = current if current in names else (names[0] if names else None)
        return gr.Dropdown(choices=names, value=value)

    def show_run(self, name: str | None):
        empty = pd.DataFrame(columns=TABLE_COLUMNS)
        none = gr.DownloadButton(visible=False)
        if not name:
            text = f"No evaluation runs under {self.settings.runs_dir} yet."
            return text, "", None, gr.Dropdown(choices=[ALL_TYPES], value=ALL_TYPES), empty, none
        try:
            summary, results = self.library.load(name)
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        if summary is None:
            text = (
                f"**{esc(name)}** has no summary yet: it is still running, or was interrupted "
                f"(rerun it with the same `--out` to finish). {len(results)} questions so far."
            )
            html = ""
        else:
            text = f"**{esc(name)}**: {questions_text(summary['n'])}."
            html = cards_html(summary)
        csv = gr.DownloadButton(value=str(self.library.export(name, results)), visible=True)
        plot_path = self.library.plot(name)
        choices = gr.Dropdown(choices=qtype_choices(results), value=ALL_TYPES)
        return (
            text,
            html,
            str(plot_path) if plot_path else None,
            choices,
            table_frame(results, sort=SORTS[0]),
            csv if not results.empty else none,
        )

    def filter_table(self, name: str | None, words: str, kind: str, order: str):
        if not name:
            return pd.DataFrame(columns=TABLE_COLUMNS)
        try:
            _, results = self.library.load(name)
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        return table_frame(results, words, kind, order)

    def select_item(self, name: str | None, evt: gr.SelectData):
        row = evt.row_value or []
        if not name or not row:
            return "", "", "", ""
        _, results = self.library.load(name)
        return item_markdown(results, str(row[0]), run_judge(self.library.folder(name)))

    def start_run(
        self,
        n: float | None,
        max_tokens: float | None,
        request: gr.Request | None = None,
        profile: gr.OAuthProfile | None = None,
        progress=gr.Progress(),
    ):
        reason = run_unavailable(self.pipeline)
        if reason:
            raise gr.Error(reason)
        try:
            self.access.require(request, profile, "start evaluation runs")
            config = run_config(self.pipeline, self.settings, n, max_tokens)
            progress((0, config.limit), desc="Loading the data and the embedder", unit="questions")
            folder = run_evaluation(
                config,
                engine=self.pipeline,
                embedder=self.refs.embedder(),
                progress=lambda done, total: progress(
                    (done, total), desc="Answering with both models and scoring", unit="questions"
                ),
                settings=self.settings,
            )
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        names = self.library.names()
        return gr.Dropdown(choices=names, value=folder.name), f"✅ Saved run {esc(folder.name)}."
