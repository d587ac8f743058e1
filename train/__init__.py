"""Training: `python -m train --config train/recipes/<name>.yaml [--key value ...]`."""
