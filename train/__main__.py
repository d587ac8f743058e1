"""Fine-tune a base model with LoRA/QLoRA on medical question-answer pairs.

    python -m train --config train/recipes/smollm2-135m-lora.yaml
    python -m train --config train/recipes/smollm2-135m-lora.yaml --max_steps 50 --output_dir /tmp/a
    accelerate launch -m train --config train/recipes/mistral-7b-qlora.yaml   # several GPUs

A YAML recipe sets defaults for three groups of options (ours, trl's SFTConfig and trl's
ModelConfig); any `--key value` on the command line overrides the recipe. `--help` lists all.
"""

import sys

from medchat.errors import MedchatError


def main(argv: list[str] | None = None) -> int:
    from train.sft import parse_args, train

    try:
        script_args, sft_config, model_config = parse_args(argv)
        out = train(script_args, sft_config, model_config)
    except MedchatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"adapter written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
