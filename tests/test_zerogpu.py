"""ZeroGPU: medchat.gpu with the real `spaces` package, the "auto" profile, model placement.

    .venv/bin/python -m pytest tests/test_zerogpu.py -q

Off ZeroGPU, `spaces.GPU` hands a function back as it is, so here the real package runs the
decorated functions unchanged. Its ZeroGPU mode patches a CUDA build of torch: the test of the
start-up on ZeroGPU is marked `gpu` and runs on a CUDA machine (`pytest -m gpu`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medchat import gpu
from medchat.loading import model_kwargs
from medchat.metrics import Embedder
from medchat.profiles import MISTRAL_7B, MISTRAL_7B_BF16, SMOLLM2, resolve_profile
from medchat.settings import REPO_ROOT


@pytest.fixture
def zero_gpu(monkeypatch):
    """SPACES_ZERO_GPU=true, set after the real `spaces` was imported off ZeroGPU: medchat sees
    a ZeroGPU Space, and spaces.GPU runs functions as they are (there is no GPU to lend)."""
    import spaces
    from spaces.config import Config

    assert not Config.zero_gpu  # read once, when spaces was first imported
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    return spaces


def test_off_zero_gpu_functions_are_left_alone_and_spaces_is_never_imported(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def answer(max_new_tokens):
        return max_new_tokens

    assert not gpu.on_zero_gpu()
    assert gpu.gpu(lambda n: gpu.token_seconds(n))(answer) is answer
    probe = (
        "import sys; from medchat import gpu; gpu.prepare(); gpu.gpu(lambda: 1)(print); "
        "print('spaces' in sys.modules, 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "SPACES_ZERO_GPU"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_on_zero_gpu_functions_go_through_the_real_spaces_gpu(zero_gpu, monkeypatch):
    asked = []
    real_gpu = zero_gpu.GPU

    def recording_gpu(*args, **kwargs):  # the real decorator, with its arguments noted
        asked.append(kwargs)
        return real_gpu(*args, **kwargs)

    monkeypatch.setattr(zero_gpu, "GPU", recording_gpu)

    def answer(max_new_tokens):
        return 2 * max_new_tokens

    def stream(max_new_tokens):
        yield from range(max_new_tokens)

    assert gpu.on_zero_gpu()
    wrapped = gpu.gpu(lambda n: gpu.token_seconds(n))(answer)
    streamed = gpu.gpu(lambda n: gpu.token_seconds(n, per_token=0.15))(stream)
    # Off a ZeroGPU machine spaces.GPU hands back the function itself: it runs as is.
    assert wrapped is answer and wrapped(7) == 14
    assert streamed is stream and list(streamed(3)) == [0, 1, 2]
    # The duration is asked per call, from the call's own arguments.
    assert [set(kw) for kw in asked] == [{"duration"}, {"duration"}]
    assert asked[0]["duration"](300) == 50 and asked[1]["duration"](300) == 65


def test_gpu_seconds_grow_with_the_tokens_asked_for_and_are_capped():
    assert gpu.token_seconds(0) == gpu.BASE_SECONDS
    assert gpu.token_seconds(300) == 50  # 20 s + 0.1 s per token
    assert gpu.token_seconds(300, per_token=0.3) == 110
    assert gpu.token_seconds(10**6) == gpu.MAX_SECONDS
    assert gpu.token_seconds("not a number") == gpu.BASE_SECONDS


def test_auto_is_mistral_bf16_on_zero_gpu(zero_gpu, monkeypatch):
    # From the environment alone: this torch has no CUDA (ZeroGPU's own torch reports one).
    assert resolve_profile("auto") is MISTRAL_7B_BF16
    assert resolve_profile("mistral-7b") is MISTRAL_7B  # a name still wins
    assert resolve_profile("smollm2-135m") is SMOLLM2
    assert resolve_profile("auto", cuda=True, zero_gpu=False) is MISTRAL_7B
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert resolve_profile("auto", cuda=False) is SMOLLM2
    assert resolve_profile("auto", cuda=True) is MISTRAL_7B


def test_on_zero_gpu_weights_move_at_start_up_and_the_embedder_stays_on_the_cpu(
    zero_gpu, monkeypatch
):
    import sentence_transformers  # noqa: F401  (imported at start-up, before the patch below)
    import torch

    # No device_map: the model loads on the CPU and load_base moves it with .to("cuda").
    kwargs = model_kwargs(MISTRAL_7B_BF16, "cuda")
    assert "device_map" not in kwargs and kwargs["dtype"] is torch.bfloat16
    # ZeroGPU's `spaces` makes torch report CUDA at start-up; scoring runs outside the
    # decorated calls, so the embedder must not go to the GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Embedder("bundled").device == "cpu"
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert model_kwargs(MISTRAL_7B_BF16, "cuda")["device_map"] == {"": "cuda"}


ZERO_GPU_START = """
import json, sys
from medchat import gpu
assert gpu.prepare()  # spaces first, as app.py does
from medchat.backends.local import LocalBackend
from medchat.engine import Engine
from medchat.loading import load_model
from medchat.metrics import Embedder
from medchat.profiles import Profile, resolve_profile

profile = Profile(name="tiny", model_id=sys.argv[1], context_window=512)
backend = LocalBackend(Engine(load_model(profile, cache_dir=sys.argv[2], device="auto")))
print(json.dumps({
    "auto": resolve_profile("auto").name,
    "device": backend.engine.loaded.device,
    "decorated": hasattr(backend._stream, "zerogpu"),
    "embedder": Embedder("bundled").device,
}))
"""


@pytest.mark.gpu
def test_a_zero_gpu_start_up_places_the_model_as_spaces_documents(tiny_llama_dir, tmp_path):
    """`spaces` in its ZeroGPU mode (no device API is reached: nothing is called on the GPU)."""
    env = os.environ | {
        "SPACES_ZERO_GPU": "true",
        "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", ZERO_GPU_START, str(tiny_llama_dir), str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "auto": "mistral-7b-bf16",
        "device": "cuda",
        "decorated": True,
        "embedder": "cpu",
    }
