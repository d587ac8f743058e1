"""Performance benchmarks: every figure is a ratio of two things measured in the same run.

    make bench                      # = python -m bench; prints a table, writes bench/results.json
    python -m bench --only stream,ttft --repeats 5

One module per area: `generation` (streaming, first token, base-vs-tuned pairs), `evaluation`
(batched answers, scoring share), `app` (tokens through the Gradio API), `startup` (process
start to first token), `training` (packed vs padded LoRA steps). `gpu.py` is a separate,
self-contained script for a GPU machine; docs/bench.md explains every figure.
"""
