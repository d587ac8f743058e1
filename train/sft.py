"""Supervised fine-tuning with trl's SFTTrainer and a LoRA (or QLoRA) adapter.

The steps of `train()`:
1. validate the set-up (data readable, columns present, split non-empty, CUDA for 4-bit)
   before anything is written;
2. load and clean the data, split it by group (no shared question or document across sides);
3. format every pair with medchat.prompts (the messages the app serves), answers shortened to
   `max_answer_words` at a sentence end; the loss covers the assistant completion only, which
   ends with the template's end-of-turn token, so the model learns to stop;
4. train (checkpoints every `save_steps`, resumable), then write the adapter, split.json,
   medchat_training.json and loss.png into `output_dir`. medchat_training.json is written
   last: a folder without it is not a finished adapter.

This module holds the options, the data and the steps; beside it, train/model.py loads the
base model for training, train/raft.py builds the retrieval (RAFT) examples, train/record.py
writes the output folder's files and finds the checkpoint to resume, and train/packing.py
attends within each example of a packed row.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medchat.data import DEFAULT_DATA, portable_source
from medchat.errors import MedchatError
from train.consumer_style import rewrite_share
from train.model import load_for_training
from train.raft import (  # cite_after_first_sentence: tests/test_retrieval.py imports it from here
    RaftBuilder,
    cite_after_first_sentence,  # noqa: F401
)
from train.record import (
    DONE_FILE,
    SAVE_DTYPES,
    cast_adapter,
    git_commit,
    jsonable,
    last_value,
    library_versions,
    plot_losses,
    resume_checkpoint,
    tensor_dtypes,
    write_record,
)


@dataclass
class ScriptArguments:
    """Our own options; SFTConfig and ModelConfig options follow in --help."""

    profile: str = field(
        default="smollm2-135m",
        metadata={
            "help": "Model profile (smollm2-135m, mistral-7b); sets the base model and "
            "chat format unless --model_name_or_path is given."
        },
    )
    data_file: str = field(
        default=str(DEFAULT_DATA),
        metadata={
            "help": "Q&A data: a CSV/JSON/JSONL/parquet file or a hub dataset id "
            "(default: the MedQuAD copy shipped in assets/data/)."
        },
    )
    question_column: str | None = field(
        default=None, metadata={"help": "Question column name (default: guessed)."}
    )
    answer_column: str | None = field(
        default=None, metadata={"help": "Answer column name (default: guessed)."}
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the train/validation/test split."}
    )
    validation_fraction: float = field(
        default=0.05, metadata={"help": "Share held out for validation."}
    )
    test_fraction: float = field(default=0.1, metadata={"help": "Share held out for testing."})
    hpo_boilerplate: str = field(
        default="cut",
        metadata={
            "help": "GARD's Human Phenotype Ontology boilerplate in training and validation "
            "answers: cut (keep the prose, turn the table into a list of signs), drop (leave "
            "those rows out) or keep."
        },
    )
    max_answer_words: int = field(
        default=0,
        metadata={
            "help": "Cut training answers to about this many words at a sentence end (0: keep)."
        },
    )
    max_train_samples: int = field(
        default=0, metadata={"help": "Use at most this many training rows (0: all)."}
    )
    max_eval_samples: int = field(
        default=200, metadata={"help": "Validation rows for the periodic eval loss (0: none)."}
    )
    adapter_save_dtype: str = field(
        default="float32",
        metadata={
            "help": "Store the adapter weights as float32, float16 or bfloat16 "
            "(float16 halves the file; LoRA weights lose nothing that matters)."
        },
    )
    cache_dir: str = field(
        default="~/.cache/medchat", metadata={"help": "Where the embedded model's copy lives."}
    )
    retrieval: bool = field(
        default=False,
        metadata={
            "help": "Retrieval-augmented fine-tuning: every training prompt carries the "
            "passages retrieved for its question from a training-split-only index, with its "
            "own passage (cited as [n] in the answer) in raft_gold_fraction of them and only "
            "other passages in the rest (the answer then starts by saying the sources do not "
            "cover it, unless a passage is on the same topic). The prompt style saved with the "
            "adapter records it, so serving retrieves the same way."
        },
    )
    retrieval_method: str = field(
        default="bm25",
        metadata={
            "help": "Retrieval method with --retrieval: bm25, dense, hybrid or topic (the "
            "app's default: the topics a question names, then the hybrid ranking)."
        },
    )
    retrieval_k: int = field(default=3, metadata={"help": "Passages per prompt (--retrieval)."})
    raft_gold_fraction: float = field(
        default=0.7,
        metadata={"help": "Share of --retrieval prompts whose passages include their own."},
    )
    consumer_style_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of the training questions rewritten as people write them (a story "
            "first, lower case, no question mark, a misspelt word, the template in their own "
            "words; train/consumer_style.py) before retrieval and the prompt; the answer stays "
            "MedQuAD's (0: none)."
        },
    )
    extra_train_file: str = field(
        default="",
        metadata={
            "help": "More question-answer rows added to the training rows only (never split, "
            "never in validation or test), e.g. real patient questions with physicians' answers "
            "from the tuning half of the consumer set (python -m eval.consumer_set answered "
            "--half tune); training without sources only."
        },
    )
    extra_train_copies: int = field(
        default=1, metadata={"help": "How many times each extra_train_file row is used."}
    )
    init_adapter: str = field(
        default="",
        metadata={
            "help": "Start from this adapter's weights (a folder written by training) instead "
            "of a fresh LoRA; its rank and targets then replace the recipe's lora_* keys."
        },
    )


def parse_args(argv: list[str] | None = None):
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig), prog="python -m train")
    config_path = _config_path(argv if argv is not None else sys.argv[1:])
    if config_path is not None and not Path(config_path).is_file():
        raise MedchatError(f"Recipe {config_path!r} does not exist; see train/recipes/.")
    try:
        return parser.parse_args_and_config(args=argv)
    except ValueError as err:
        text = str(err)
        unknown = re.findall(r"'(--[\w.-]+)'", text)
        if unknown:
            raise MedchatError(
                f"Unknown option {', '.join(unknown)}; check the recipe keys and flags against "
                "python -m train --help."
            ) from None
        if "bf16" in text and "gpu" in text.lower():
            raise MedchatError(
                "This recipe trains in bf16, which needs a GPU; on a CPU use "
                "train/recipes/smollm2-135m-lora.yaml or pass --bf16 false."
            ) from None
        raise MedchatError(f"Bad recipe or flag: {text.splitlines()[0].rstrip('.')}.") from None
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise MedchatError(
                "Unknown or malformed option (see the line above); check the flag or recipe key."
            ) from None
        raise


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def build_datasets(script_args: ScriptArguments, profile, hpo: dict | None = None):
    """(train Dataset, eval Dataset | None, splits, load report) in prompt-completion form;
    `hpo`, when given, receives the HPO boilerplate counts of the training rows.

    The split is made on the data as loaded (so split.json's keys select the same rows later);
    the HPO option then applies to the training and validation rows only, and the validation
    rows for the periodic loss are a seeded sample spread over the sources."""
    from datasets import Dataset

    from medchat.data import (
        handle_hpo_boilerplate,
        load_pairs,
        sample_across,
        shorten_answer,
        split_by_group,
    )
    from medchat.prompts import training_example

    if not script_args.data_file:
        raise MedchatError(
            "No training data given; set data_file in the recipe or pass --data_file."
        )
    if not 0.0 <= script_args.consumer_style_fraction <= 1.0:
        raise MedchatError("consumer_style_fraction must be between 0 and 1.")
    if script_args.extra_train_file and script_args.retrieval:
        raise MedchatError(
            "extra_train_file is for training without sources: its rows have no NIH page to "
            "put in the prompt; leave out --retrieval or the extra file."
        )
    if script_args.extra_train_copies < 1:
        raise MedchatError("extra_train_copies must be 1 or more.")
    df, report = load_pairs(
        script_args.data_file,
        question_column=script_args.question_column,
        answer_column=script_args.answer_column,
    )
    splits = split_by_group(
        df,
        seed=script_args.split_seed,
        validation_fraction=script_args.validation_fraction,
        test_fraction=script_args.test_fraction,
    )

    raft = RaftBuilder(script_args, splits["train"]) if script_args.retrieval else None

    def to_rows(frame, *, consumer_style: bool = False):
        rows = []
        questions = list(frame["question"])
        if consumer_style and script_args.consumer_style_fraction:
            # Before retrieval too: serving searches with the question as the person wrote it.
            questions, counts = rewrite_share(
                questions,
                list(frame["focus"]) if "focus" in frame else [""] * len(questions),
                script_args.consumer_style_fraction,
                seed=script_args.split_seed,
            )
            if hpo is not None:
                hpo["consumer_style"] = counts
        for i, (q, a, key) in enumerate(zip(questions, frame["answer"], frame["key"], strict=True)):
            answer = shorten_answer(a, script_args.max_answer_words)
            if raft is None:
                rows.append(training_example(q, answer, system_role=profile.system_role))
                continue
            passages, answer = raft.example(q, key, answer, seed=script_args.split_seed + i)
            rows.append(
                training_example(q, answer, system_role=profile.system_role, passages=passages)
            )
        if raft is not None and hpo is not None:
            hpo["raft"] = raft.counts
        return rows

    train_frame, counts = handle_hpo_boilerplate(splits["train"], script_args.hpo_boilerplate)
    if hpo is not None:
        hpo.update(counts)
    if train_frame.empty:
        raise MedchatError(
            "No training row is left after dropping the HPO boilerplate rows; "
            "use --hpo_boilerplate cut or keep."
        )
    if script_args.max_train_samples:
        train_frame = train_frame.sample(
            n=min(script_args.max_train_samples, len(train_frame)),
            random_state=script_args.split_seed,
        )
    train_rows = to_rows(train_frame, consumer_style=True)
    if script_args.extra_train_file:
        extra, extra_report = load_pairs(script_args.extra_train_file)
        rows = to_rows(extra)  # as asked: no consumer-style rewrite, no sources
        train_rows += rows * script_args.extra_train_copies
        if hpo is not None:
            hpo["extra_train"] = {
                "file": portable_source(script_args.extra_train_file),
                "sha256": extra_report.sha256,
                "rows": len(rows),
                "copies": script_args.extra_train_copies,
            }
    train_ds = Dataset.from_list(train_rows).shuffle(seed=script_args.split_seed)
    eval_ds = None
    validation, _ = handle_hpo_boilerplate(splits["validation"], script_args.hpo_boilerplate)
    if script_args.max_eval_samples and len(validation):
        val = sample_across(validation, script_args.max_eval_samples, seed=script_args.split_seed)
        eval_ds = Dataset.from_list(to_rows(val))
    return train_ds, eval_ds, splits, report


def sft_trainer(model, tokenizer, sft_config, train_ds, eval_ds=None, *, peft_config, **extra):
    """trl's SFTTrainer as the training run sets it up: the recipe's SFTConfig, the tokenizer as
    processing class, a fresh LoRA from `peft_config` (None: `model` is a PeftModel already);
    `extra` (callbacks, ...) goes to the trainer. The benchmarks build theirs here too."""
    from trl import SFTTrainer

    return SFTTrainer(
        model,
        args=sft_config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        **extra,
    )


def train(script_args: ScriptArguments, sft_config, model_config) -> Path:
    from trl import get_peft_config

    from medchat.data import write_split
    from medchat.profiles import resolve_profile
    from medchat.prompts import write_style

    # 1. validate before writing anything
    profile = resolve_profile(script_args.profile)
    out = Path(sft_config.output_dir)
    resume = sft_config.resume_from_checkpoint
    if (out / DONE_FILE).exists() and not resume:
        raise MedchatError(
            f"{out} already holds a finished adapter; choose another --output_dir or delete it."
        )
    if not model_config.use_peft:
        raise MedchatError("This script trains LoRA adapters; set use_peft: true in the recipe.")
    if script_args.adapter_save_dtype not in SAVE_DTYPES:
        raise MedchatError(
            f"adapter_save_dtype {script_args.adapter_save_dtype!r} is unknown; use float32, "
            "float16 or bfloat16."
        )
    resume_arg = resume_checkpoint(resume, out)
    hpo: dict = {}
    train_ds, eval_ds, splits, report = build_datasets(script_args, profile, hpo)
    print(f"data: {report}; split sizes " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    if hpo["rows"]:
        print(
            f"HPO boilerplate ({script_args.hpo_boilerplate}): {hpo['rows']} training answers, "
            f"{hpo['cut']} cut, {hpo['dropped']} left out"
        )
    if hpo.get("consumer_style"):
        style = hpo["consumer_style"]
        print(
            f"consumer-style questions: {style['rewritten']} of {style['rows']} training rows "
            "rewritten (" + ", ".join(f"{k} {n}" for k, n in style["kinds"].items()) + ")"
        )
    model, tokenizer, source = load_for_training(script_args, sft_config, model_config, profile)
    # trl cuts a longer example at max_length, end-of-turn token included, which would teach
    # the model not to stop: leave such examples out.
    train_ds, too_long = drop_overlong(train_ds, tokenizer, sft_config.max_length)
    if len(train_ds) == 0:
        raise MedchatError(
            f"No training example fits in max_length={sft_config.max_length} tokens; "
            "raise --max_length."
        )
    if too_long:
        print(
            f"{too_long} training examples longer than max_length={sft_config.max_length} left out"
        )
    if eval_ds is not None:
        eval_ds, _ = drop_overlong(eval_ds, tokenizer, sft_config.max_length)
        eval_ds = eval_ds if len(eval_ds) else None

    # 2. train
    if eval_ds is None:
        sft_config.eval_strategy = "no"
    out.mkdir(parents=True, exist_ok=True)
    peft_config = get_peft_config(model_config)
    if script_args.init_adapter:
        from peft import PeftModel

        if not (Path(script_args.init_adapter) / "adapter_config.json").is_file():
            raise MedchatError(
                f"init_adapter {script_args.init_adapter!r} is not an adapter folder."
            )
        model = PeftModel.from_pretrained(model, script_args.init_adapter, is_trainable=True)
        peft_config = None
    trainer = sft_trainer(model, tokenizer, sft_config, train_ds, eval_ds, peft_config=peft_config)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_arg)
    wall = time.perf_counter() - start
    final_eval = trainer.evaluate() if eval_ds is not None else {}

    # 3. write the adapter and its record; the record last
    # Record the base by its public name when it is the profile's own model (the embedded
    # copy lives in a cache folder); a custom --model_name_or_path is recorded as given.
    own_base = model_config.model_name_or_path in (None, "", profile.model_id)
    base_name = profile.model_id if own_base else model_config.model_name_or_path
    trainer.model.peft_config["default"].base_model_name_or_path = base_name
    trainer.save_model(str(out))  # every rank calls it; the trainer writes on the main one
    # With several processes (accelerate launch) every rank trained, but only the main one
    # writes: two writers of one folder would rewrite the adapter under each other, and push
    # it twice.
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()
        return out
    trained_dtype = tensor_dtypes(
        {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    )
    adapter_dtype = cast_adapter(out / "adapter_model.safetensors", script_args.adapter_save_dtype)
    data_source = portable_source(script_args.data_file)
    write_split(out / "split.json", splits, source=data_source, seed=script_args.split_seed)
    write_style(out, prompt_style(script_args))
    history = trainer.state.log_history
    plot_losses(history, out / "loss.png")
    train_tokens = (
        sum(len(x) for x in trainer.train_dataset["input_ids"])
        if ("input_ids" in trainer.train_dataset.column_names)
        else None
    )
    epochs = trainer.state.epoch or 0.0
    samples_per_s = result.metrics.get("train_samples_per_second")
    record = {
        "profile": profile.name,
        "base_model": base_name,
        "base_source": str(source),
        "recipe": {
            "script": asdict(script_args),
            "sft": jsonable(sft_config.to_dict()),
            "model": jsonable(asdict(model_config)),
        },
        # The data by identity: a file's sha256 (a repository file by its repository path), a
        # hub dataset's id and commit; never only a path of this machine.
        "data_file": data_source,
        "data_sha256": report.sha256,
        "data_hub_id": report.hub_id,
        "data_revision": report.revision,
        "data_report": report.as_dict(),
        "hpo_boilerplate": {
            "mode": script_args.hpo_boilerplate,
            **{k: v for k, v in hpo.items() if k not in ("raft", "consumer_style", "extra_train")},
        },
        "raft": hpo.get("raft"),
        # Rows trained on beside the split's training rows (extra_train_file), by identity.
        "extra_train": hpo.get("extra_train"),
        # Training questions rewritten as people write them, by kind (train/consumer_style.py).
        "consumer_style": hpo.get("consumer_style"),
        "init_adapter": portable_source(script_args.init_adapter)
        if script_args.init_adapter
        else None,
        "prompt_style": prompt_style(script_args).as_dict(),
        # The LoRA weights' dtype in training, and in adapter_model.safetensors as saved.
        "lora_train_dtype": trained_dtype,
        "adapter_dtype": adapter_dtype,
        "attn_implementation": model.config._attn_implementation,
        "padding_free": bool(getattr(trainer, "padding_free", False)),
        "split_seed": script_args.split_seed,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "train_rows_used": len(train_ds),
        "steps": trainer.state.global_step,
        "epochs": epochs,
        "final_train_loss": last_value(history, "loss"),
        "final_eval_loss": final_eval.get("eval_loss"),
        "wall_seconds": round(wall, 1),
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        # tokens/s of this sitting: mean tokens per sample times samples/s (right after a resume)
        "train_tokens_per_second": (
            round(train_tokens / len(trainer.train_dataset) * samples_per_s, 1)
            if train_tokens and samples_per_s
            else None
        ),
        "resumed_from": str(resume_arg) if resume_arg else None,
        "library_versions": library_versions(),
        "git_commit": git_commit(),
        "log_history": history,
    }
    write_record(out, record)
    if sft_config.push_to_hub:
        trainer.push_to_hub()  # after the record, so the hub copy holds it too
    trainer.accelerator.wait_for_everyone()
    return out


def prompt_style(script_args: ScriptArguments):
    """The prompt style the adapter is trained with, saved beside it for serving."""
    from medchat.prompts import PromptStyle
    from medchat.retrieval import PASSAGE_WORDS

    retrieval = None
    if script_args.retrieval:
        retrieval = {
            "method": script_args.retrieval_method,
            "k": script_args.retrieval_k,
            "passage_words": PASSAGE_WORDS,
            "gold_fraction": script_args.raft_gold_fraction,
        }
    return PromptStyle(retrieval=retrieval)


def drop_overlong(dataset, tokenizer, max_length: int | None):
    """(the examples whose prompt + completion fit in max_length tokens, how many did not)."""
    if not max_length:
        return dataset, 0

    def fits(example) -> bool:
        messages = example["prompt"] + example["completion"]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
        return len(ids["input_ids"]) <= max_length

    kept = dataset.filter(fits)
    return kept, len(dataset) - len(kept)
