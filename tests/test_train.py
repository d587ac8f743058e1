"""`python -m train`: recipes, a tiny LoRA run end to end, label masking, the split, bad input.

The runs put conftest's tiny random Llama (with the real SmolLM2 tokenizer) in place of the
base model, on a few dozen rows, for ten steps of the CPU recipe. Our fixed system prompt alone
is about 120 SmolLM2 tokens, so sequences are cut at MAX_LENGTH = 192, not lower.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from medchat.errors import MedchatError
from medchat.profiles import PROFILES
from train import __main__ as train_cli
from train import sft
from train.model import padding_free
from train.record import cast_adapter

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "train" / "recipes").glob("*.yaml"))
CPU_RECIPE = REPO / "train" / "recipes" / "smollm2-135m-lora.yaml"
SEED_RECIPE = REPO / "train" / "recipes" / "mistral-7b-seed.yaml"
QLORA_RECIPE = REPO / "train" / "recipes" / "mistral-7b-qlora.yaml"
MAX_LENGTH = 192
RUN_STEPS = 10

CONDITIONS = (
    "glaucoma", "asthma", "anemia", "gout", "psoriasis", "migraine",
    "scabies", "rickets", "tetanus", "vertigo", "eczema", "shingles",
)  # fmt: skip


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def write_qa_csv(path: Path, long_answer_words: int = 0) -> Path:
    """28 rows in 12 groups: each condition's two questions share a document_id, and every
    third condition also has a differently written copy of its first question (no document).

    With `long_answer_words`, the first answer gets that many extra words (too long for
    MAX_LENGTH).
    """
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["question", "answer", "document_id"])
        for i, name in enumerate(CONDITIONS):
            doc = f"doc-{i:02d}"
            answer = f"{name.capitalize()} is a common condition. A doctor can confirm it."
            if i == 0 and long_answer_words:
                answer += " It" + " really" * long_answer_words + " matters."
            out.writerow([f"What is {name}?", answer, doc])
            out.writerow(
                [
                    f"What are the symptoms of {name}?",
                    f"The symptoms of {name} vary. See a doctor if they get worse.",
                    doc,
                ]
            )
            if i % 3 == 0:
                out.writerow([f"WHAT IS {name.upper()}", f"{name.capitalize()} is treatable.", ""])
    return path


def override(argv: list[str], changes: list[str]) -> list[str]:
    """`argv` with each `--flag value` of `changes` replacing that flag's value, or added."""
    argv = list(argv)
    for flag, value in zip(changes[::2], changes[1::2], strict=True):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def tiny_argv(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """The CPU recipe on the tiny model; `extra` flags replace or add to these."""
    return override([
        "--config", str(CPU_RECIPE),
        "--model_name_or_path", str(model_dir),
        "--data_file", str(data),
        "--output_dir", str(out),
        "--max_length", str(MAX_LENGTH),
        "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2",
        "--report_to", "none",
        "--disable_tqdm", "true",
    ], list(extra))  # fmt: skip


class TrainerBuilt(Exception):
    """Raised in place of training once train() has built its trainer."""


def record_trainers(monkeypatch: pytest.MonkeyPatch, *, stop: bool) -> list:
    """Make train() build a recording SFTTrainer; with `stop`, it raises instead of training."""
    import trl

    made: list = []

    class RecordingTrainer(trl.SFTTrainer):
        def train(self, *args, **kwargs):
            made.append(self)
            if stop:
                raise TrainerBuilt
            return super().train(*args, **kwargs)

    monkeypatch.setattr(trl, "SFTTrainer", RecordingTrainer)
    return made


def build_trainer(argv: list[str]):
    """The SFTTrainer that `python -m train <argv>` would train, built but not trained."""
    with pytest.MonkeyPatch.context() as mp:
        made = record_trainers(mp, stop=True)
        with pytest.raises(TrainerBuilt):
            sft.train(*sft.parse_args(argv))
    return made[0]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Steps of a tiny model are dominated by thread hand-offs: one thread is several times faster
    # than two on a busy two-core machine.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- recipes -----------------------------------------------------------------------------------
def parse_recipe(path: Path):
    argv = ["--config", str(path)]
    if not cuda_available():
        # The GPU recipes train in bf16, which transformers refuses to set up without a GPU.
        argv += ["--use_cpu", "true"]
    return sft.parse_args(argv)


def test_recipes_are_found():
    names = {p.name for p in RECIPES}
    assert {CPU_RECIPE.name, SEED_RECIPE.name, QLORA_RECIPE.name} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_parses_to_a_lora_run(recipe: Path):
    script, config, model = parse_recipe(recipe)
    profile = PROFILES[script.profile]
    assert model.use_peft is True
    assert model.lora_r > 0 and model.lora_alpha > 0 and 0 <= model.lora_dropout < 1
    assert profile.accepts_base(model.model_name_or_path), "the recipe's base fits its profile"
    assert model.load_in_4bit is profile.load_in_4bit
    # The MedQuAD copy that ships with the project: a fresh clone trains without other files.
    assert script.data_file == "assets/data/medquad.parquet" and (REPO / script.data_file).is_file()
    assert script.hpo_boilerplate == "cut"
    assert config.output_dir.startswith("runs/train/")
    assert config.completion_only_loss is True
    assert 0 < config.learning_rate <= 1e-3
    assert 0 < config.warmup_steps < 1  # a ratio of the steps (transformers 5), not a count
    assert config.max_length >= 256
    assert 0 < script.test_fraction < 1
    assert config.report_to in ("none", [], ["none"])


def test_cpu_recipe_needs_no_gpu():
    script, config, model = sft.parse_args(["--config", str(CPU_RECIPE)])
    assert script.profile == "smollm2-135m"
    assert model.load_in_4bit is False and model.load_in_8bit is False
    assert config.bf16 is False and config.fp16 is False
    assert model.lora_r == 16 and model.lora_target_modules == "all-linear"


def test_cpu_recipe_packs_without_padding_and_drops_no_medquad_row():
    script, config, model = sft.parse_args(["--config", str(CPU_RECIPE)])
    assert config.packing is True and padding_free(config)
    assert model.attn_implementation == "sdpa_varlen"
    # The longest formatted MedQuAD row of this recipe (answers cut at 150 words) is ~460
    # tokens; max_length must keep it, or the row is left out of training.
    assert script.max_answer_words == 150 and config.max_length >= 512


def test_cpu_recipe_data_on_the_shipped_medquad():
    """The recipe's own data path: training answers without the HPO boilerplate, and the
    validation rows of the periodic loss drawn from every source (not the first rows)."""
    from medchat.data import file_sha256, has_hpo_boilerplate
    from medchat.profiles import resolve_profile

    script, _, _ = sft.parse_args(["--config", str(CPU_RECIPE)])
    script.data_file = str(REPO / script.data_file)  # wherever the tests run from
    script.max_answer_words = 0  # whole answers: a cut at 150 words can end before the list
    hpo: dict = {}
    train_ds, eval_ds, splits, report = sft.build_datasets(
        script, resolve_profile(script.profile), hpo
    )
    marked = int(splits["train"]["answer"].map(has_hpo_boilerplate).sum())
    assert hpo == {"rows": marked, "cut": marked, "dropped": 0} and marked > 1500
    answers = [c[0]["content"] for c in train_ds["completion"]]
    assert len(answers) == len(splits["train"])
    assert not any("Human Phenotype Ontology" in a for a in answers)
    listed = re.compile(r"^Signs and symptoms of .+ can include:\n- ", re.MULTILINE)
    assert sum(bool(listed.search(a)) for a in answers) == marked
    validation = splits["validation"]
    source_of = dict(zip(validation["question"], validation["source"], strict=True))
    asked = [p[-1]["content"] for p in eval_ds["prompt"]]
    sources = {source_of[q] for q in asked}
    assert len(asked) == script.max_eval_samples == 200
    assert len(sources) == splits["validation"]["source"].nunique() == 9
    assert report.sha256 == file_sha256(script.data_file)


def test_seed_recipe_has_the_seeds_hyper_parameters():
    script, config, model = parse_recipe(SEED_RECIPE)
    assert script.profile == "mistral-7b"
    assert model.model_name_or_path == "mistralai/Mistral-7B-Instruct-v0.2"
    assert (model.lora_r, model.lora_alpha, model.lora_dropout) == (64, 16, pytest.approx(0.1))
    assert sorted(model.lora_target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert model.load_in_4bit is True and model.bnb_4bit_quant_type == "nf4"
    assert config.per_device_train_batch_size == 4
    assert config.gradient_accumulation_steps == 1
    assert str(getattr(config.optim, "value", config.optim)) == "paged_adamw_32bit"
    assert config.learning_rate == pytest.approx(2e-4)
    assert config.max_grad_norm == pytest.approx(0.3)
    assert config.warmup_steps == pytest.approx(0.03)
    assert str(getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type)) == "constant"
    assert config.num_train_epochs == 3
    assert config.max_steps == 100
    assert config.packing is False


def test_qlora_recipe_packs_checkpoints_and_evaluates():
    script, config, model = parse_recipe(QLORA_RECIPE)
    assert script.profile == "mistral-7b"
    assert model.load_in_4bit is True and model.use_bnb_nested_quant is True
    assert model.dtype == "bfloat16"
    assert config.packing is True
    assert config.bf16 is True
    assert config.gradient_checkpointing is True
    assert config.completion_only_loss is True
    assert str(getattr(config.eval_strategy, "value", config.eval_strategy)) == "steps"
    assert config.eval_steps and config.eval_steps > 0
    assert script.validation_fraction > 0 and script.max_eval_samples > 0
    assert config.save_steps and config.save_total_limit


GPU_RECIPES = [r for r in RECIPES if "bf16: true" in r.read_text()]


def test_the_gpu_recipes_are_the_mistral_ones():
    assert {r.name for r in GPU_RECIPES} == {SEED_RECIPE.name, QLORA_RECIPE.name}


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: p.stem)
def test_gpu_recipes_run_on_several_gpus_without_the_unused_parameter_search(recipe: Path):
    """Under `accelerate launch` (DDP), transformers searches for unused parameters of a PEFT
    model unless told not to, which fails with gradient checkpointing."""
    _, config, _ = parse_recipe(recipe)
    assert config.ddp_find_unused_parameters is False


def test_a_bf16_adapter_is_saved_in_the_dtype_asked_for(tmp_path):
    """QLoRA trains its LoRA weights in bf16 and the trainer saves them so; the file must
    still hold adapter_save_dtype (float32 by default)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path / "adapter_model.safetensors"
    weights = {"a.lora_A.weight": torch.randn(4, 8), "a.lora_B.weight": torch.randn(8, 4)}
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, path)
    assert cast_adapter(path, "float32") == "float32"
    saved = load_file(path)
    assert {t.dtype for t in saved.values()} == {torch.float32}
    for name, value in weights.items():
        assert torch.equal(saved[name], value.to(torch.bfloat16).float())
    assert cast_adapter(path, "float16") == "float16"
    assert {t.dtype for t in load_file(path).values()} == {torch.float16}
    with pytest.raises(MedchatError, match="adapter_save_dtype 'int8' is unknown"):
        cast_adapter(path, "int8")


def test_the_qlora_recipe_trains_two_steps_on_the_cpu_and_saves_float32(tiny_mistral_dir, tmp_path):
    """The QLoRA recipe as it trains on a GPU (bf16, packed rows under sdpa_varlen, gradient
    checkpointing, paged 8-bit AdamW), 4-bit off, on the tiny Mistral: two steps."""
    import torch
    from safetensors.torch import load_file

    data = write_qa_csv(tmp_path / "qa.csv")
    out = tmp_path / "adapter"
    argv = [
        "--config", str(QLORA_RECIPE),
        "--model_name_or_path", str(tiny_mistral_dir),
        "--data_file", str(data),
        "--output_dir", str(out),
        "--load_in_4bit", "false",
        "--max_steps", "2",
        "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2",
        "--gradient_accumulation_steps", "1",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    if not cuda_available():
        argv += ["--use_cpu", "true"]  # bf16 on the CPU
    script, config, model = sft.parse_args(argv)
    assert config.bf16 and config.packing and config.gradient_checkpointing
    assert model.attn_implementation == "sdpa_varlen" and model.dtype == "bfloat16"
    assert script.adapter_save_dtype == "float32"  # the default: the recipe does not set it
    sft.train(script, config, model)
    assert {t.dtype for t in load_file(out / "adapter_model.safetensors").values()} == {
        torch.float32
    }
    record = json.loads((out / sft.DONE_FILE).read_text())
    assert record["adapter_dtype"] == "float32"
    assert record["steps"] == 2 and record["padding_free"] is True
    assert record["attn_implementation"] == "sdpa_varlen"
    assert record["recipe"]["sft"]["ddp_find_unused_parameters"] is False


# -- a tiny run end to end -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama_dir: Path):
    """Ten steps on the same four training rows at a high learning rate, with periodic
    checkpoints and validation; returns the folder, the trainer and the base weights before."""
    from transformers import AutoModelForCausalLM

    work = tmp_path_factory.mktemp("train-run")
    data = write_qa_csv(work / "qa.csv")
    out = work / "adapter"
    base_before = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    argv = tiny_argv(
        tiny_llama_dir, data, out,
        "--max_steps", str(RUN_STEPS),
        "--max_train_samples", "4",
        "--learning_rate", "5e-3",
        "--lr_scheduler_type", "constant",
        "--warmup_steps", "0",
        "--logging_steps", "1",
        "--save_steps", "5",
        "--eval_steps", "5",
        "--validation_fraction", "0.1",
        "--max_eval_samples", "2",
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        made = record_trainers(mp, stop=False)
        returned = sft.train(*sft.parse_args(argv))
    record = json.loads((out / sft.DONE_FILE).read_text())
    return SimpleNamespace(
        out=out, returned=returned, data=data, trainer=made[0], record=record, argv=argv,
        base_before=base_before,
    )  # fmt: skip


def test_run_writes_a_complete_adapter_folder(tiny_run, tiny_llama_dir: Path):
    out = tiny_run.out
    assert Path(tiny_run.returned) == out
    for name in ("adapter_config.json", "adapter_model.safetensors", "split.json", "loss.png"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / (sft.DONE_FILE + ".tmp")).exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16
    # A custom --model_name_or_path is recorded as given, so the adapter finds its base again.
    assert config["base_model_name_or_path"] == str(tiny_llama_dir)


def test_training_record_holds_what_reproduces_the_run(tiny_run, tiny_llama_dir: Path):
    rec, trainer = tiny_run.record, tiny_run.trainer
    assert rec["data_file"] == str(tiny_run.data)
    assert rec["data_sha256"] == hashlib.sha256(tiny_run.data.read_bytes()).hexdigest()
    assert rec["data_hub_id"] is None and rec["data_revision"] is None  # a local file
    assert rec["hpo_boilerplate"] == {"mode": "cut", "rows": 0, "cut": 0, "dropped": 0}
    assert rec["data_report"]["rows_kept"] == 28
    assert rec["split_seed"] == 0
    split = json.loads((tiny_run.out / "split.json").read_text())
    assert rec["split_sizes"] == split["sizes"]
    assert sum(rec["split_sizes"].values()) == 28
    assert rec["train_rows_used"] == 4
    assert rec["steps"] == RUN_STEPS
    assert rec["epochs"] == pytest.approx(RUN_STEPS * 2 / 4)  # batch 2 over 4 rows
    assert rec["recipe"]["sft"]["max_steps"] == RUN_STEPS
    assert rec["recipe"]["model"]["lora_r"] == 16
    assert rec["recipe"]["model"]["model_name_or_path"] == str(tiny_llama_dir)
    assert rec["recipe"]["script"]["max_train_samples"] == 4
    losses = [h["loss"] for h in rec["log_history"] if "loss" in h]
    evals = [h["eval_loss"] for h in rec["log_history"] if "eval_loss" in h]
    assert len(losses) == RUN_STEPS and len(evals) >= 2
    assert rec["final_train_loss"] == losses[-1]
    assert isinstance(rec["final_eval_loss"], float) and rec["final_eval_loss"] > 0
    assert rec["wall_seconds"] > 0 and rec["train_samples_per_second"] > 0
    # tokens/s is samples/s times the mean length of a training row
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    per_sample = rec["train_tokens_per_second"] / rec["train_samples_per_second"]
    assert per_sample == pytest.approx(sum(lengths) / len(lengths), rel=0.02)
    for name in ("torch", "transformers", "peft", "trl"):
        assert rec["library_versions"][name] == importlib.metadata.version(name)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert rec["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert rec["resumed_from"] is None
    # The CPU recipe packs; the record says how the batches were attended.
    assert rec["padding_free"] is True and rec["attn_implementation"] == "sdpa_varlen"


def test_lora_weights_trained_and_base_weights_untouched(tiny_run):
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    model = tiny_run.trainer.model
    # Every base weight (LoRA-wrapped layers keep theirs as `base_layer`) equals the file's.
    after = {
        k.replace(".base_layer.", "."): v
        for k, v in model.get_base_model().state_dict().items()
        if "lora_" not in k
    }
    assert after.keys() == tiny_run.base_before.keys()
    changed = [k for k, v in tiny_run.base_before.items() if not torch.equal(v, after[k])]
    assert changed == []
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)

    # peft starts every lora_B at zero: each one moved, and the file holds the trained values
    # in the recipe's adapter_save_dtype (float16).
    saved = load_file(tiny_run.out / "adapter_model.safetensors")
    trained = get_peft_model_state_dict(model)
    assert saved.keys() == trained.keys()
    lora_b = [k for k in saved if "lora_B" in k]
    assert len(lora_b) == 2 * 7  # two layers, seven linear modules each
    for key in lora_b:
        assert saved[key].abs().max() > 0, key
    for key, value in saved.items():
        assert value.dtype == torch.float16, key
        torch.testing.assert_close(value.float(), trained[key].float(), rtol=1e-2, atol=1e-4)


def test_the_written_adapter_loads_in_the_app_and_changes_the_output(
    tiny_run, tiny_llama_profile, cache_dir
):
    import torch

    from medchat.loading import load_model

    loaded = load_model(tiny_llama_profile, str(tiny_run.out), cache_dir=cache_dir, device="cpu")
    ids = loaded.tokenizer("What is gout?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        tuned = loaded.model(input_ids=ids).logits
        with loaded.model.disable_adapter():
            base = loaded.model(input_ids=ids).logits
    assert (tuned - base).abs().max() > 1e-3


def test_loss_falls_on_a_repeated_tiny_set(tiny_run):
    losses = [h["loss"] for h in tiny_run.record["log_history"] if "loss" in h]
    # Untrained, the tiny model's loss is ln(vocabulary) ~ 10.8; steps are noisy, so compare the
    # first with the mean of the last three.
    assert losses[0] - sum(losses[-3:]) / 3 > 0.3, losses


def test_split_beside_the_adapter_keeps_groups_on_one_side(tiny_run):
    from medchat.data import load_pairs, normalize_question, read_split

    df, _ = load_pairs(str(tiny_run.data))
    split = read_split(tiny_run.out)
    side = {key: "train" for key in df["key"]}
    for name in ("validation", "test"):
        assert split[name], f"{name} side is empty"
        for key in split[name]:
            assert key in side, "split.json names a row that is not in the data"
            side[key] = name
    df["side"] = df["key"].map(side)
    assert df["side"].value_counts().to_dict() == {k: v for k, v in split["sizes"].items() if v}
    df["normal"] = df["question"].map(normalize_question)
    # The data really has groups to keep together.
    assert df["normal"].duplicated().any() and df["document_id"].dropna().duplicated().any()
    for column in ("normal", "document_id"):
        sides = df.dropna(subset=[column]).groupby(column)["side"].nunique()
        assert sides.max() == 1, f"a {column} falls on two sides: {sides[sides > 1].index[:3]}"
    # ... and no held-out question reached the trainer.
    held_out = set(df.loc[df["side"] != "train", "normal"])
    examples = training_examples(tiny_run.argv)
    packed = [n for lengths in tiny_run.trainer.train_dataset["seq_lengths"] for n in lengths]
    assert len(packed) == len(examples), "the trainer packed other examples than these"
    for prompt in examples["prompt"]:
        assert normalize_question(prompt[-1]["content"]) not in held_out


def test_a_finished_folder_is_not_overwritten(tiny_run, capsys):
    before = (tiny_run.out / sft.DONE_FILE).read_bytes()
    assert train_cli.main(tiny_run.argv) == 2
    line = error_line(capsys.readouterr().err)
    assert str(tiny_run.out) in line and "--output_dir" in line
    assert (tiny_run.out / sft.DONE_FILE).read_bytes() == before


# -- what the loss sees -----------------------------------------------------------------------
def batch_examples(batch):
    """(input ids, labels) of each example of a collated batch, padded or padding-free."""
    mask = batch.get("attention_mask")
    if mask is None:  # padding-free: one row; an example starts where the position ids restart
        assert batch["input_ids"].shape[0] == 1
        positions = batch["position_ids"][0]
        starts = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
        assert starts[0] == 0
        for start, end in zip(starts[:-1], starts[1:], strict=True):
            yield batch["input_ids"][0, start:end], batch["labels"][0, start:end]
        return
    for i, ids in enumerate(batch["input_ids"]):
        keep = mask[i].bool()
        assert (batch["labels"][i][~keep] == -100).all(), "padding carries loss"
        yield ids[keep], batch["labels"][i][keep]


def label_rows(trainer):
    """(prompt ids, labelled ids) of each example of the trainer's own training batches."""
    rows = []
    for batch in trainer.get_train_dataloader():
        for real, labels in batch_examples(batch):
            labelled = (labels != -100).nonzero().flatten()
            n = len(labelled)
            assert n > 0
            # The loss covers one unbroken stretch that ends the row: the completion.
            assert labelled.tolist() == list(range(len(real) - n, len(real)))
            assert labels[labelled].tolist() == real[-n:].tolist()
            rows.append((real[:-n].tolist(), real[-n:].tolist()))
    return rows


def training_examples(argv: list[str]):
    """The prompt-completion examples `python -m train <argv>` trains on, before trl
    tokenises (and perhaps packs) them."""
    from medchat.profiles import resolve_profile

    script_args, _, _ = sft.parse_args(argv)
    examples, _, _, _ = sft.build_datasets(script_args, resolve_profile(script_args.profile))
    return examples


def expected_texts(tok, examples) -> dict[str, str]:
    """Rendered prompt text -> rendered completion text, for each training example."""
    texts = {}
    for prompt, completion in zip(examples["prompt"], examples["completion"], strict=True):
        before = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(prompt + completion, tokenize=False)
        assert full.startswith(before)
        texts[before] = full[len(before) :]
    return texts


@pytest.mark.parametrize("packing", ["true", "false"])
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-mistral"])
def test_loss_covers_the_answer_and_its_end_of_turn_token_only(model, packing, request, tmp_path):
    if model == "tiny-llama":
        model_dir, profile = request.getfixturevalue("tiny_llama_dir"), "smollm2-135m"
    else:
        model_dir, profile = request.getfixturevalue("tiny_mistral_dir"), "mistral-7b"
    data = write_qa_csv(tmp_path / "qa.csv")
    argv = tiny_argv(
        model_dir, data, tmp_path / "out",
        "--profile", profile, "--dtype", "float32", "--packing", packing,
    )  # fmt: skip
    # Parsed first: parsing again would reset the accelerator state the trainer's loader uses.
    examples = training_examples(argv)
    trainer = build_trainer(argv)
    assert trainer.padding_free is (packing == "true")
    tok = trainer.processing_class
    assert tok.pad_token_id != tok.eos_token_id, "a pad equal to EOS would hide EOS from the loss"
    texts = expected_texts(tok, examples)
    answers = {c[0]["content"] for c in examples["completion"]}
    rows = label_rows(trainer)
    assert len(rows) == len(examples) == len(texts)
    for prompt_ids, labelled_ids in rows:
        prompt = tok.decode(prompt_ids)
        assert prompt in texts, f"the unlabelled part is not a whole prompt: {prompt[-80:]!r}"
        completion = tok.decode(labelled_ids)
        assert completion.strip() == texts[prompt].strip()
        # The answer, then the end-of-turn token, then at most the template's whitespace.
        answer, eos, tail = completion.partition(tok.eos_token)
        assert eos == tok.eos_token and tail.strip() == ""
        assert answer.strip() in answers
        assert tok.eos_token_id in labelled_ids
        if model == "tiny-llama":
            assert tok.eos_token == "<|im_end|>"
            assert "<|im_start|>" not in completion


def test_packed_training_attends_within_each_example(tiny_llama_dir, tmp_path, sdpa_calls):
    """A training step of the CPU recipe takes sdpa_varlen's per-example path: one SDPA call
    per example and layer, never the whole-row fallback."""
    data = write_qa_csv(tmp_path / "qa.csv")
    trainer = build_trainer(tiny_argv(tiny_llama_dir, data, tmp_path / "out"))
    assert trainer.padding_free and trainer.model.config._attn_implementation == "sdpa_varlen"
    batch = next(iter(trainer.get_train_dataloader()))
    n_examples = int((batch["position_ids"][0] == 0).sum())
    assert n_examples == 2  # two one-example packs, flattened into one row
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))
    loss.backward()
    layers = trainer.model.config.num_hidden_layers
    assert sdpa_calls == {"kernel": n_examples * layers, "fallback": 0}


def test_a_model_without_sdpa_trains_packed_with_its_own_attention(
    tiny_llama_dir, tmp_path, monkeypatch, capsys
):
    """Packing with no attention named picks sdpa_varlen; a model that cannot load with it is
    loaded with the attention transformers picks, as before, and the run says so."""
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained.__func__
    cls = transformers.AutoModelForCausalLM

    def no_sdpa(klass, source, **kwargs):
        if kwargs.get("attn_implementation") == "sdpa_varlen":
            raise ValueError("this model does not support sdpa")
        return real(klass, source, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(no_sdpa))
    data = write_qa_csv(tmp_path / "qa.csv")
    trainer = build_trainer(
        tiny_argv(tiny_llama_dir, data, tmp_path / "out", "--attn_implementation", "")
    )
    assert trainer.model.config._attn_implementation == "sdpa"
    assert "cannot use sdpa_varlen" in capsys.readouterr().out


def test_every_training_example_keeps_its_end_of_turn_token(tiny_llama_dir, tmp_path):
    data = write_qa_csv(tmp_path / "qa.csv", long_answer_words=120)
    trainer = build_trainer(tiny_argv(tiny_llama_dir, data, tmp_path / "out"))
    eos = trainer.processing_class.eos_token_id
    rows = label_rows(trainer)
    assert rows
    for _, labelled_ids in rows:
        assert eos in labelled_ids


def test_a_max_length_that_fits_no_example_is_one_error(tiny_llama_dir, tmp_path, capsys):
    data = write_qa_csv(tmp_path / "qa.csv")
    out = tmp_path / "out"
    argv = tiny_argv(tiny_llama_dir, data, out, "--max_length", "64")
    assert train_cli.main(argv) == 2
    assert "max_length" in error_line(capsys.readouterr().err)
    assert not (out / sft.DONE_FILE).exists()


# -- bad input -------------------------------------------------------------------------------
def error_line(stderr: str) -> str:
    """The one `error: ...` line of stderr, checked to be a single sentence."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    message = lines[0][len("error: ") :]
    assert message.endswith(".") and not message.endswith(".."), message
    return message


def bad_inputs(tmp: Path) -> dict[str, list[str]]:
    """Each case: argv overriding the tiny CPU run (data, recipe or flags)."""
    (tmp / "empty.csv").write_text("")
    (tmp / "garbled.parquet").write_bytes(bytes(range(256)) * 4)
    (tmp / "columns.csv").write_text("symptom,remedy\nfever,rest\ncough,tea\nrash,cream\n")
    (tmp / "two.csv").write_text(
        "question,answer\nWhat is gout?,A joint disease.\nWhat is acne?,A skin disease.\n"
    )  # noqa: E501
    (tmp / "unknown-key.yaml").write_text(CPU_RECIPE.read_text() + "\nno_such_key: 1\n")
    return {
        "missing data file": ["--data_file", str(tmp / "nope.csv")],
        "no data file": ["--data_file", ""],
        "empty file": ["--data_file", str(tmp / "empty.csv")],
        "unreadable file": ["--data_file", str(tmp / "garbled.parquet")],
        "no question column": ["--data_file", str(tmp / "columns.csv")],
        "split leaves a side empty": ["--data_file", str(tmp / "two.csv")],
        "unknown recipe key": ["--config", str(tmp / "unknown-key.yaml")],
        "unknown flag": ["--no_such_flag", "1"],
        "missing recipe": ["--config", str(tmp / "nope.yaml")],
        "4-bit without CUDA": ["--load_in_4bit", "true"],
        "GPU recipe without CUDA": ["--config", str(QLORA_RECIPE)],
        "unknown attention": ["--attn_implementation", "sdpa_varlenn"],
    }


BAD_CASES = [
    pytest.param("missing data file", "nope.csv"),
    pytest.param("no data file", "--data_file"),
    pytest.param("empty file", "empty.csv"),
    pytest.param("unreadable file", "garbled.parquet"),
    pytest.param("no question column", "question"),
    pytest.param("split leaves a side empty", "empty"),
    pytest.param("unknown recipe key", "no_such_key"),
    pytest.param("unknown flag", "no_such_flag"),
    pytest.param("missing recipe", "nope.yaml"),
    pytest.param("4-bit without CUDA", "CUDA"),
    pytest.param("GPU recipe without CUDA", "smollm2-135m-lora"),
    pytest.param("unknown attention", "'sdpa_varlenn'"),
]


@pytest.mark.parametrize(("case", "named"), BAD_CASES, ids=[p.values[0] for p in BAD_CASES])
def test_bad_input_is_one_error_line_and_nothing_written(
    case, named, tiny_llama_dir, tmp_path, capsys
):
    if "CUDA" in case and cuda_available():
        pytest.skip("this machine has CUDA")
    data = write_qa_csv(tmp_path / "qa.csv")
    out = tmp_path / "out"
    argv = tiny_argv(tiny_llama_dir, data, out, *bad_inputs(tmp_path)[case])
    assert train_cli.main(argv) == 2
    assert named in error_line(capsys.readouterr().err)
    assert not out.exists(), "the set-up is checked before anything is written"


def test_resume_without_a_checkpoint_fails_before_loading_the_model(
    tiny_llama_dir, tmp_path, capsys, monkeypatch
):
    def no_loading(*args, **kwargs):
        raise AssertionError("the base model was loaded before the resume check")

    monkeypatch.setattr(sft, "load_for_training", no_loading)
    data = write_qa_csv(tmp_path / "qa.csv")
    out = tmp_path / "out"
    argv = tiny_argv(tiny_llama_dir, data, out, "--resume_from_checkpoint", "true")
    assert train_cli.main(argv) == 2
    assert "checkpoint" in error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing data file", "unknown flag"])
def test_the_command_exits_2_with_one_error_line(case, tiny_llama_dir, tmp_path):
    data = write_qa_csv(tmp_path / "qa.csv")
    out = tmp_path / "out"
    argv = tiny_argv(tiny_llama_dir, data, out, *bad_inputs(tmp_path)[case])
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "train", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    error_line(done.stderr)
    assert "adapter written" not in done.stdout
    assert not out.exists()
