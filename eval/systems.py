"""python -m eval.systems PLAIN_RUN SOURCES_RUN [--adapter-run RUN ...] [--label NAME]

Four systems on the same questions, from two run folders of `python -m eval` over the same
rows: PLAIN_RUN without sources (base, adapter A) and SOURCES_RUN with them (base + sources,
adapter B + sources). Prints a markdown table: cosine (with the embedder named in the caption),
the paired difference to the plain base with its 95% bootstrap CI, ROUGE-L, the share of
answers that hit the token limit, the share citing a source, the share of citations that
point to a passage in the prompt, and the share saying the sources do not cover the question.
Each `--adapter-run` adapter is also compared with PLAIN_RUN's adapter, paired by question
(cosine and ROUGE-L, 95% bootstrap CI): is it better than the adapter it would replace?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from medchat import metrics
from medchat.errors import MedchatError
from medchat.evaluation import load_run


def _pct(x) -> str:
    return "—" if x is None or pd.isna(x) else f"{100 * x:.0f}%"


def systems(
    plain: Path, sources: Path, *, more: tuple[Path, ...] = (), seed: int = 0
) -> tuple[list[dict], dict]:
    """(one row per system, facts about the runs) for two runs over the same questions; `more`:
    runs of further adapters without sources over the same questions, each adding its adapter
    (paired with PLAIN's base, which those runs must share: same answers, same scores)."""
    s1, r1 = load_run(plain)
    s2, r2 = load_run(sources)
    others = [load_run(path) for path in more]
    for s, r in [(s2, r2), *others]:
        if s1["embedder"] != s["embedder"]:
            raise MedchatError("The runs were scored with different embedders; rerun one.")
        if sorted(r1["key"]) != sorted(r["key"]):
            raise MedchatError("The runs scored different questions; use the same rows.")
    r2 = r2.set_index("key").loc[r1["key"]].reset_index()
    others = [(s, r.set_index("key").loc[r1["key"]].reset_index()) for s, r in others]
    base = r1["base_cosine"].to_numpy()
    for path, (_, r) in zip(more, others, strict=True):
        if not np.allclose(r["base_cosine"].to_numpy(), base, atol=1e-6):
            raise MedchatError(
                f"{path} has other base answers than {plain}; run both with the same settings."
            )
    rows = []
    adapters = [(s, r, "tuned", f"adapter `{Path(s['run']['adapter']).name}`") for s, r in others]
    for run, results, side, name in (
        (s1, r1, "base", "base"),
        (s1, r1, "tuned", f"adapter `{Path(s1['run']['adapter']).name}`"),
        *adapters,
        (s2, r2, "base", "base + sources"),
        (s2, r2, "tuned", f"adapter `{Path(s2['run']['adapter']).name}` + sources"),
    ):
        paired = metrics.paired_summary(base, results[f"{side}_cosine"].to_numpy(), seed=seed)
        rows.append(
            {
                "system": name,
                "cosine": float(results[f"{side}_cosine"].mean()),
                "diff": paired["mean_diff"],
                "ci": (paired["ci_low"], paired["ci_high"]),
                "rouge_l": float(results[f"{side}_rouge_l"].mean()),
                "hit_limit": float(results[f"{side}_hit_limit"].astype(bool).mean()),
                "citing": run[side].get("citing_share"),
                "valid": run[side].get("citations_valid"),
                "not_covered": run[side].get("not_covered_share"),
            }
        )
    # Each further adapter against PLAIN's adapter, paired by question: is it better than the
    # adapter it would replace?
    against = []
    for s, r in others:
        pair = {
            m: metrics.paired_summary(
                r1[f"tuned_{m}"].to_numpy(), r[f"tuned_{m}"].to_numpy(), seed=seed
            )
            for m in ("cosine", "rouge_l")
        }
        against.append(
            {
                "system": f"adapter `{Path(s['run']['adapter']).name}`",
                "reference": f"adapter `{Path(s1['run']['adapter']).name}`",
                **{m: (p["mean_diff"], p["ci_low"], p["ci_high"]) for m, p in pair.items()},
            }
        )
    facts = {
        "against": against,
        "n": len(r1),
        "embedder": s1["embedder"],
        "retrieval": s2.get("retrieval") or {},
        "index": s2["run"].get("index") or {},
        "run_retrieval": s2["run"].get("retrieval") or {},
    }
    return rows, facts


def render(rows: list[dict], facts: dict, label: str) -> str:
    r, index = facts["retrieval"], facts["index"]
    lines = [
        f"**{label}** (n = {facts['n']}; cosine with {facts['embedder']}; sources: "
        f"{facts['run_retrieval'].get('method', '?')}, k = {facts['run_retrieval'].get('k', '?')}, "
        f"index of {index.get('passages', '?')} passages"
        + (", held-out rows left out" if index.get("restricted_to") else "")
        + f"; {_pct(r.get('with_sources'))} of questions got a passage, "
        f"{_pct(r.get('topic_hit'))} one on their own topic)",
        "",
        "| system | cosine | vs base [95% CI] | ROUGE-L | hit the limit | cites a source | "
        "citations to a given passage | says sources do not cover it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        diff = (
            ""
            if row["system"] == "base"
            else (f"{row['diff']:+.3f} [{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}]")
        )
        lines.append(
            f"| {row['system']} | {row['cosine']:.3f} | {diff} | {row['rouge_l']:.3f} | "
            f"{_pct(row['hit_limit'])} | {_pct(row['citing'])} | {_pct(row['valid'])} | "
            f"{_pct(row['not_covered'])} |"
        )
    for a in facts.get("against", []):
        cos, rouge = a["cosine"], a["rouge_l"]
        lines.append(
            f"\n{a['system']} against {a['reference']}, paired: cosine {cos[0]:+.3f} "
            f"[{cos[1]:+.3f}, {cos[2]:+.3f}], ROUGE-L {rouge[0]:+.3f} [{rouge[1]:+.3f}, "
            f"{rouge[2]:+.3f}]"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.systems", description=__doc__.split("\n")[2]
    )
    parser.add_argument("plain", type=Path, help="run folder without sources")
    parser.add_argument("sources", type=Path, help="run folder with sources, same questions")
    parser.add_argument("--label", default="", help="a caption for the table")
    parser.add_argument(
        "--adapter-run",
        type=Path,
        action="append",
        default=[],
        help="a run of another adapter without sources over the same questions (its adapter "
        "becomes a row and is compared with PLAIN_RUN's adapter; repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        rows, facts = systems(args.plain, args.sources, more=tuple(args.adapter_run))
    except MedchatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(render(rows, facts, args.label or args.sources.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
