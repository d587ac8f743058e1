"""The Evaluate tab: browse evaluation runs, or start a small one with the loaded model.

A run folder (docs/eval.md) holds results.jsonl and summary.json; this tab shows the summary
as metric cards, the similarity plot, a searchable per-question table and, for a selected
question, the reference and both answers; with a statement set (K-QA), under each answer the
judge's verdict on every statement. A run still being written shows what it has so far.

API: `/eval_runs` lists runs, `/eval_load` (run) shows one, `/eval_table` (run, search, qtype,
sort) filters its table, `/eval_start` (n, max_new_tokens) starts a run.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import fields
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from medchat.access import Access
from medchat.errors import MedchatError
from medchat.evaluation import (
    PLOT,
    RESULTS,
    SUMMARY,
    EvalConfig,
    default_out_dir,
    list_runs,
    load_run,
    read_results,
    run_evaluation,
)
from medchat.gpu import on_zero_gpu
from medchat.settings import Settings
from medchat.statements import MUST, NICE, run_judge
from medchat.ui.common import ReferenceBook, esc, export_dir, short_name, shown

ALL_TYPES = "All question types"
SORTS = (
    "Difference: fine-tuned ahead first",
    "Difference: base ahead first",
    "Run order",
)
TABLE_COLUMNS = ["key", "qtype", "base", "tuned", "difference", "question"]


class RunLibrary:
    """The run folders under one directory, read back with a small cache."""

    def __init__(self, *run_dirs: Path):
        self.run_dirs = tuple(Path(d) for d in run_dirs)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, tuple[dict | None, pd.DataFrame]]] = {}
        self._exports = export_dir()

    def names(self) -> list[str]:
        return [p.name for p in list_runs(*self.run_dirs)]

    def folder(self, name: str) -> Path:
        """The folder of a listed run; anything else (a path, a stale name) is refused."""
        folders = {p.name: p for p in list_runs(*self.run_dirs)}
        if not name or name not in folders:
            raise MedchatError(
                f"There is no evaluation run named {name!r}; pick one from the list."
            )
        return folders[name]

    def load(self, name: str) -> tuple[dict | None, pd.DataFrame]:
        """(summary or None while the run is unfinished, results so far)."""
        folder = self.folder(name)
        stamp = tuple(_mtime(folder / f) for f in (SUMMARY, RESULTS))
        with self._lock:
            cached = self._cache.get(name)
            if cached and cached[0] == stamp:
                return cached[1]
        if (folder / SUMMARY).is_file():
            summary, results = load_run(folder)
        else:
            summary, results = None, pd.DataFrame(read_results(folder / RESULTS))
        if not results.empty:
            results = results.assign(difference=results["tuned_cosine"] - results["base_cosine"])
        with self._lock:
            self._cache[name] = (stamp, (summary, results))
        return summary, results

    def export(self, name: str, results: pd.DataFrame) -> Path:
        path = self._exports / f"{name}-results.csv"
        results.to_csv(path, index=False)
        return path

    def plot(self, name: str) -> Path | None:
        """A copy of the run's similarity.png in the app's export folder (servable anywhere)."""
        source = self.folder(name) / PLOT
        if not source.is_file():
            return None
        target = self._exports / f"{name}-{PLOT}"
        shutil.copyfile(source, target)
        return target


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# -- what the tab shows ------------------------------------------------------------------------
def _num(x, spec: str = ".3f") -> str:
    try:
        return "n/a" if x is None or pd.isna(x) else format(x, spec)
    except (TypeError, ValueError):
        return "n/a"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _card(title: str, value: str, detail: str = "") -> str:
    return (
        f'<div class="metric-card"><div class="metric-title">{esc(title)}</div>'
        f'<div class="metric-value">{esc(value)}</div>'
        f'<div class="metric-detail">{esc(detail)}</div></div>'
    )


# Fewer questions than this and a bootstrap interval says little (with one question it is a
# single point): the cards show none, and say why.
MIN_CI_N = 10


def _questions(n: int) -> str:
    return f"{n} question" if n == 1 else f"{n} questions"


def _ci(low, high, spec: str, n: int) -> str:
    if n < MIN_CI_N:
        return f"no 95% CI from {_questions(n)} (an interval needs {MIN_CI_N})"
    return f"95% CI {_num(low, spec)} to {_num(high, spec)}"


def cards_html(summary: dict) -> str:
    """The summary's headline numbers as a row of cards; intervals only from MIN_CI_N
    questions up."""
    base, tuned = summary["base"], summary["tuned"]
    paired = summary["paired"]["cosine"]
    run = summary.get("run", {})
    n = int(summary.get("n") or 0)
    cards = [
        _card(
            "Base: mean cosine",
            _num(base["cosine"]["mean"]),
            _ci(base["cosine"]["ci_low"], base["cosine"]["ci_high"], ".3f", n),
        ),
        _card(
            "Fine-tuned: mean cosine",
            _num(tuned["cosine"]["mean"]),
            _ci(tuned["cosine"]["ci_low"], tuned["cosine"]["ci_high"], ".3f", n),
        ),
        _card(
            "Fine-tuned − base",
            _num(paired["mean_diff"], "+.3f"),
            _ci(paired["ci_low"], paired["ci_high"], "+.3f", n),
        ),
        _card(
            "Fine-tuned closer",
            _pct(paired["win_rate"]),
            f"of {_questions(paired['n'])} (ties {_pct(paired['tie_rate'])})",
        ),
        _card(
            "Hit the token limit",
            f"{_pct(base['truncation_rate'])} → {_pct(tuned['truncation_rate'])}",
            f"base → fine-tuned, {run.get('max_new_tokens', '?')} tokens at most",
        ),
    ]
    cards += statement_cards(summary.get("statements"), n)
    if n < MIN_CI_N:
        verdict = (
            f"Too few questions for an interval ({n}; it needs {MIN_CI_N}): these numbers "
            "cannot tell the models apart."
        )
    elif paired["ci_low"] is None or paired["ci_high"] is None:
        verdict = "No interval could be computed."
    elif paired["ci_low"] <= 0 <= paired["ci_high"]:
        verdict = "The interval contains 0: no evidence of a difference on these questions."
    else:
        verdict = "The interval excludes 0."
    note = (
        f'<div class="metric-note">n = {esc(summary["n"])} · split {esc(run.get("split", "?"))}'
        f" · scored with {esc(short_name(str(summary.get('embedder', '?')).split(' (')[0]))}"
        f" · {esc(verdict)}</div>"
    )
    return f'<div class="metric-cards">{"".join(cards)}</div>{note}{run_details_html(summary)}'


def statement_cards(statements: dict | None, n: int) -> list[str]:
    """Comprehensiveness and hallucination (base → fine-tuned, the paired difference's
    interval), each naming the judge and its agreement with physicians."""
    if not statements:
        return []
    judge = statements.get("judge") or {}
    kappa = (judge.get("agreement") or {}).get("kappa")
    trust = f"κ {kappa:.2f} vs physicians" if kappa is not None else "agreement not measured"
    cards = []
    for name, title in (("comprehensiveness", "Must-have statements entailed"),
                        ("hallucination", "Statements contradicted")):  # fmt: skip
        paired = statements["paired"].get(name) or {}
        detail = (
            f"base → fine-tuned; difference {_num(paired.get('mean_diff'), '+.3f')}, "
            + _ci(paired.get("ci_low"), paired.get("ci_high"), "+.3f", n)
            + f"; judge {judge.get('name', '?')} ({trust})"
        )
        base, tuned = statements["base"][name]["mean"], statements["tuned"][name]["mean"]
        cards.append(_card(title, f"{_pct(base)} → {_pct(tuned)}", detail))
    return cards


# The run's technical record, shown on demand under the cards: summary key path, label.
RUN_DETAILS = (
    (("embedder",), "embedder"),
    (("run", "profile"), "profile"),
    (("run", "base_model"), "base model"),
    (("run", "adapter"), "adapter"),
    (("run", "data"), "data"),
    (("run", "limit"), "sample size asked for"),
    (("run", "retrieval"), "sources in the prompt"),
    (("run", "folder"), "run folder"),
    (("timing", "finished"), "finished"),
)


def run_details_html(summary: dict) -> str:
    """The paths, hashes and settings of a run in a collapsed details element."""
    items = []
    for path, label in RUN_DETAILS:
        value = summary
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value not in (None, "", {}):
            items.append(f"<li>{esc(label)}: <code>{esc(value)}</code></li>")
    if not items:
        return ""
    return (
        '<details class="run-details"><summary>Run details</summary>'
        f"<ul>{''.join(items)}</ul></details>"
    )


def table_frame(
    results: pd.DataFrame, search: str = "", qtype: str = ALL_TYPES, sort: str = ""
) -> pd.DataFrame:
    """The per-question table: filtered by text and question type, sorted."""
    if results.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    frame = results
    if qtype and qtype != ALL_TYPES and "qtype" in frame.columns:
        frame = frame[frame["qtype"].fillna("") == qtype]
    words = (search or "").strip().lower()
    if words:
        haystack = frame["question"].str.lower() + " " + frame["key"].str.lower()
        frame = frame[haystack.str.contains(words, regex=False)]
    if sort == SORTS[0]:
        frame = frame.sort_values("difference", ascending=False, kind="stable")
    elif sort == SORTS[1]:
        frame = frame.sort_values("difference", ascending=True, kind="stable")
    qtypes = frame["qtype"].fillna("") if "qtype" in frame.columns else ""
    return pd.DataFrame(
        {
            "key": frame["key"],
            "qtype": qtypes,
            "base": frame["base_cosine"].round(3),
            "tuned": frame["tuned_cosine"].round(3),
            "difference": frame["difference"].round(3),
            "question": frame["question"],
        }
    ).reset_index(drop=True)


def qtype_choices(results: pd.DataFrame) -> list[str]:
    if results.empty or "qtype" not in results.columns:
        return [ALL_TYPES]
    counts = results["qtype"].dropna().value_counts()
    return [ALL_TYPES, *counts.index.astype(str)]


# How the Evaluate tab shows a judge's verdict on one statement.
VERDICT_SHOWN = {
    "entailed": "✅ covered",
    "contradicted": "❌ contradicted",
    "neither": "▫️ not covered",
    "unparsed": "❔ no verdict",
}


def _statement_list(value) -> list[str]:
    if isinstance(value, list | tuple | np.ndarray):
        return [str(s) for s in value]
    return []


def verdicts_markdown(row, side: str, judge: str | None) -> str:
    """One side's statements with the judge's verdict on each (must-have first), headed by
    the judge's name and the counts; "" for a result without statements or verdicts."""
    statements = [("must-have", s) for s in _statement_list(row.get(MUST))]
    statements += [("nice-to-have", s) for s in _statement_list(row.get(NICE))]
    verdicts = _statement_list(row.get(f"{side}_verdicts"))
    if not statements or len(verdicts) != len(statements):
        return ""
    must = [v for (kind, _), v in zip(statements, verdicts, strict=True) if kind == "must-have"]
    judge = judge or "the run's judge"
    head = (
        f"**Statements, judged by {shown(judge)}:** "
        f"{sum(v == 'entailed' for v in must)} of {len(must)} must-have covered, "
        f"{sum(v == 'contradicted' for v in verdicts)} of {len(verdicts)} contradicted"
    )
    items = [
        f"- {VERDICT_SHOWN.get(v, shown(v))} · *{kind}*: {shown(text)}"
        for (kind, text), v in zip(statements, verdicts, strict=True)
    ]
    return "\n\n" + head + "\n\n" + "\n".join(items)


def item_markdown(
    results: pd.DataFrame, key: str, judge: str | None = None
) -> tuple[str, str, str, str]:
    """(question, reference, base answer, fine-tuned answer) of one result, as markdown; with
    statements, each answer is followed by `judge`'s verdict on each statement."""
    rows = results[results["key"] == key] if not results.empty else results
    if rows.empty:
        return "", "", "", ""
    row = rows.iloc[0]

    def answer(side: str) -> str:
        limit = " · stopped at the token limit" if row.get(f"{side}_hit_limit") else ""
        return (
            f"**cosine {_num(row.get(f'{side}_cosine'))}** · {row.get(f'{side}_tokens', '?')} "
            f"tokens{limit}\n\n{shown(row.get(f'{side}_answer'))}"
            + verdicts_markdown(row, side, judge)
        )

    qtype = row.get("qtype")
    tag = f" *({shown(qtype)})*" if isinstance(qtype, str) and qtype else ""
    return (
        f"**Question** `{key}`{tag}: {shown(row['question'])}",
        shown(row["reference"]),
        answer("base"),
        answer("tuned"),
    )


def run_unavailable(pipeline) -> str | None:
    """Why this app cannot start an evaluation run, or None when it can."""
    if on_zero_gpu():
        return (
            "Runs cannot start here: a ZeroGPU Space lends its GPU for one short call at a time. "
            "Run `python -m eval` on a machine of your own and copy the run folder in."
        )
    if not pipeline.has_adapter:
        return "No fine-tuned adapter is loaded, so there is nothing to evaluate; use --adapter."
    adapter = Path(str(pipeline.adapter)).expanduser()
    if adapter.is_dir() and not (adapter / "split.json").is_file():
        return (
            "The loaded adapter has no split.json, so its held-out questions are unknown; run "
            "`python -m eval --split all --data FILE` from the command line instead."
        )
    return None


# -- starting a run ---------------------------------------------------------------------------
# A run started here scores like `python -m eval` (EvalConfig's defaults: split, seed, greedy,
# token limit), so its numbers compare with the command line's; only the sample size is asked.
RUN_QUESTIONS = 8
RUN_MAX_NEW_TOKENS: int = {f.name: f.default for f in fields(EvalConfig)}["max_new_tokens"]


def run_batch_size(pipeline) -> int:
    """Questions per generation batch for a run started in the tab.

    The progress shown moves when a batch is scored and saved. On a CPU, batching buys little
    (a base+tuned pair took 1.68x one answer, two separate calls 1.88x), so one question per
    batch lets the progress move question by question; on a GPU or behind a model server,
    where batching pays, the run keeps `python -m eval`'s batch size.
    """
    device = str(pipeline.info().get("device", "")).lower()
    if device.startswith("cpu"):
        return 1
    return {f.name: f.default for f in fields(EvalConfig)}["batch_size"]


def run_config(pipeline, settings: Settings, n, max_tokens) -> EvalConfig:
    """The EvalConfig of a run started in the tab: `n` questions (default RUN_QUESTIONS) with at
    most `max_tokens` new tokens (default `python -m eval`'s), a new folder under runs_dir."""
    try:
        limit = RUN_QUESTIONS if n is None else int(n)
        tokens = RUN_MAX_NEW_TOKENS if max_tokens is None else int(max_tokens)
    except (TypeError, ValueError):
        raise MedchatError(
            f"Questions is {n!r} and max new tokens {max_tokens!r}; give two whole numbers."
        ) from None
    config = EvalConfig(
        adapter=str(pipeline.adapter),
        data=settings.eval_data or None,
        limit=limit,
        batch_size=run_batch_size(pipeline),
        max_new_tokens=tokens,
    )
    config.out = default_out_dir(config, settings.runs_dir)
    return config


# -- the tab ----------------------------------------------------------------------------------
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
    names = library.names()
    with gr.Row():
        run = gr.Dropdown(
            names,
            value=names[0] if names else None,
            label="Evaluation run",
            info=f"run folders under {settings.runs_dir} and the shipped runs in assets/eval",
            scale=4,
            elem_id="eval-run",
            allow_custom_value=True,  # runs appear while the app runs; names are checked
        )
        refresh = gr.Button("Refresh list", scale=1)
    status = gr.Markdown()
    cards = gr.HTML(elem_id="eval-cards")
    plot = gr.Image(label="Cosine similarity to the reference", type="filepath", interactive=False)
    with gr.Row():
        search = gr.Textbox(label="Search questions", placeholder="word or key", scale=3)
        qtype = gr.Dropdown(
            [ALL_TYPES], value=ALL_TYPES, label="Question type", scale=2, allow_custom_value=True
        )
        sort = gr.Dropdown(list(SORTS), value=SORTS[0], label="Sort by", scale=2)
    table = gr.Dataframe(
        headers=TABLE_COLUMNS,
        interactive=False,
        wrap=True,
        max_height=420,
        label="Per question (click a row for the answers)",
        elem_id="eval-table",
        column_widths=["12%", "12%", "8%", "8%", "10%", "50%"],
    )
    item_question = gr.Markdown()
    with gr.Accordion("Reference answer", open=True):
        item_reference = gr.Markdown()
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("#### Base model")
            item_base = gr.Markdown(elem_classes=["answer"])
        with gr.Column():
            gr.Markdown("#### Fine-tuned model")
            item_tuned = gr.Markdown(elem_classes=["answer"])
    download = gr.DownloadButton("Download results CSV", visible=False)

    blocked = run_unavailable(pipeline)
    with gr.Accordion("Start a small evaluation run", open=False):
        gr.Markdown(
            blocked
            or "Answers a seeded sample of the adapter's held-out test questions with both "
            "models (greedy), scores them against the reference answers, and saves a new run "
            "folder. While it runs, chat and compare wait for the model."
        )
        with gr.Row():
            n_items = gr.Slider(
                1, 64, value=RUN_QUESTIONS, step=1, label="Questions", elem_id="eval-questions"
            )
            n_tokens = gr.Slider(
                16,
                512,
                value=RUN_MAX_NEW_TOKENS,
                step=16,
                label="Max new tokens",
                info=f"{RUN_MAX_NEW_TOKENS} as in `python -m eval`; fewer cut answers short",
                elem_id="eval-max-tokens",
            )
        with gr.Row(equal_height=True):
            start = gr.Button(
                "Start run",
                variant="primary",
                interactive=blocked is None,
                scale=1,
                elem_id="eval-start",
            )
            # The run's progress shows here, beside the button, question by question.
            run_status = gr.Markdown(elem_id="eval-run-status", scale=3, min_height=64)

    def refresh_runs(current: str | None):
        names = library.names()
        value = current if current in names else (names[0] if names else None)
        return gr.Dropdown(choices=names, value=value)

    def show_run(name: str | None):
        empty = pd.DataFrame(columns=TABLE_COLUMNS)
        none = gr.DownloadButton(visible=False)
        if not name:
            text = f"No evaluation runs under {settings.runs_dir} yet."
            return text, "", None, gr.Dropdown(choices=[ALL_TYPES], value=ALL_TYPES), empty, none
        try:
            summary, results = library.load(name)
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        if summary is None:
            text = (
                f"**{esc(name)}** has no summary yet: it is still running, or was interrupted "
                f"(rerun it with the same `--out` to finish). {len(results)} questions so far."
            )
            html = ""
        else:
            text = f"**{esc(name)}**: {_questions(summary['n'])}."
            html = cards_html(summary)
        csv = gr.DownloadButton(value=str(library.export(name, results)), visible=True)
        plot_path = library.plot(name)
        choices = gr.Dropdown(choices=qtype_choices(results), value=ALL_TYPES)
        return (
            text,
            html,
            str(plot_path) if plot_path else None,
            choices,
            table_frame(results, sort=SORTS[0]),
            csv if not results.empty else none,
        )

    def filter_table(name: str | None, words: str, kind: str, order: str):
        if not name:
            return pd.DataFrame(columns=TABLE_COLUMNS)
        try:
            _, results = library.load(name)
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        return table_frame(results, words, kind, order)

    def select_item(name: str | None, evt: gr.SelectData):
        row = evt.row_value or []
        if not name or not row:
            return "", "", "", ""
        _, results = library.load(name)
        return item_markdown(results, str(row[0]), run_judge(library.folder(name)))

    def start_run(
        n: float | None,
        max_tokens: float | None,
        request: gr.Request | None = None,
        profile: gr.OAuthProfile | None = None,
        progress=gr.Progress(),
    ):
        reason = run_unavailable(pipeline)
        if reason:
            raise gr.Error(reason)
        try:
            access.require(request, profile, "start evaluation runs")
            config = run_config(pipeline, settings, n, max_tokens)
            progress((0, config.limit), desc="Loading the data and the embedder", unit="questions")
            folder = run_evaluation(
                config,
                engine=pipeline,
                embedder=refs.embedder(),
                progress=lambda done, total: progress(
                    (done, total), desc="Answering with both models and scoring", unit="questions"
                ),
                settings=settings,
            )
        except MedchatError as err:
            raise gr.Error(str(err)) from err
        names = library.names()
        return gr.Dropdown(choices=names, value=folder.name), f"✅ Saved run {esc(folder.name)}."

    shown_outputs = [status, cards, plot, qtype, table, download]
    item_outputs = [item_question, item_reference, item_base, item_tuned]
    refresh.click(refresh_runs, [run], [run], api_name="eval_runs")
    run.change(show_run, [run], shown_outputs, api_name="eval_load")
    # The answers shown under the table belong to the run that was shown: cleared with it.
    run.change(
        lambda: ("", "", "", ""), None, item_outputs, queue=False, api_visibility="undocumented"
    )
    gr.on(
        [search.submit, qtype.change, sort.change],
        filter_table,
        [run, search, qtype, sort],
        [table],
        api_name="eval_table",
    )
    table.select(select_item, [run], item_outputs, api_visibility="undocumented")
    start.click(
        start_run,
        [n_items, n_tokens],
        [run, run_status],
        api_name="eval_start",
        concurrency_limit=1,
        show_progress_on=[run_status],
    )
    # Show the newest run when the page opens.
    demo.load(show_run, [run], shown_outputs, api_visibility="undocumented")
