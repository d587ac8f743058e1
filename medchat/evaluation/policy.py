"""Which NIH sources a run's prompts get: retrieval_for (none, or a method and k) and
eval_index (the index searched, less every row held out from training).

`--retrieval auto` (the default) gives a run the prompts the app serves the same adapter: it
reads the adapter's prompt style with medchat.prompts.adapter_style and asks
medchat.pipeline.sources_in_prompt, as the pipeline does (docs/retrieval.md, "What each model
is given"): an adapter trained with sources gets them, one trained without gets none, the base
model alone gets them. `on` puts sources in every prompt (to measure an adapter trained without
them, given them), `off` in none.

    retrieval = retrieval_for(config, adapter, settings)        # {"method", "k"} or None
    index = eval_index(config, adapter, retrieval, data_sha256, keys, settings)
"""

from __future__ import annotations

from medchat.errors import MedchatError
from medchat.evaluation.config import EvalConfig, held_out_keys
from medchat.prompts import adapter_style
from medchat.settings import Settings


def retrieval_for(
    config: EvalConfig, adapter: str | None, settings: Settings | None = None
) -> dict | None:
    """What retrieval a run uses ({"method", "k"}), or None for prompts without sources.

    `adapter` is the resolved adapter (None: the base model alone). The method and k are the
    config's, else the adapter's training ones, else `settings`' (default: Settings())."""
    from medchat.pipeline import sources_in_prompt

    settings = settings if settings is not None else Settings()
    wanted = config.retrieval or "auto"
    style, trained_style = adapter_style(adapter)  # as the local backend serves it
    if wanted == "off" or (
        wanted == "auto" and not sources_in_prompt(wanted, style, trained_style)
    ):
        return None
    trained = style.retrieval or {}
    return {
        "method": config.retrieval_method or trained.get("method") or settings.retrieval_method,
        "k": int(config.retrieval_k or trained.get("k") or settings.retrieval_k),
    }


def eval_index(
    config: EvalConfig,
    adapter: str,
    retrieval: dict,
    data_sha: str | None,
    keys,
    settings: Settings | None = None,
):
    """The index a run searches: the shipped MedQuAD, less every row held out from training
    when the scored data is MedQuAD itself (so no scored answer can be retrieved). Its cache
    is `settings`' cache_dir (default: Settings())."""
    from medchat.retrieval import load_index

    settings = settings if settings is not None else Settings()
    index = load_index(method=retrieval["method"], cache_dir=settings.cache_dir)
    if data_sha is None or data_sha != index.identity.get("data_sha256"):
        return index  # other questions (MedicationQA, your own file): the whole library
    if config.split == "all":
        raise MedchatError(
            "Scoring every MedQuAD row with retrieval would retrieve the answers themselves; "
            "use --split test or --retrieval off."
        )
    held = held_out_keys(config, adapter) | set(keys)
    train_keys = {p.key for p in index.passages} - held
    return index.restricted(train_keys, name="rows not held out by the scored adapter(s)")
