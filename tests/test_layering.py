"""Which layers load what: the CLI loads no gradio, reading the UI's settings loads no torch.

Each check runs in a fresh interpreter, since this test process has both loaded already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(code: str) -> set[str]:
    probe = (
        code + "\nimport sys\nprint(' '.join(m for m in ('torch', 'gradio') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        ("import medchat.__main__", {"gradio", "torch"}),
        (
            "from medchat.settings import Settings\n"
            "import medchat.ui.common\n"
            "from medchat.generation import read_params\n"
            "read_params(Settings(), 0.5, 0.9, 64)",
            {"torch"},
        ),
    ],
)
def test_a_layer_loads_only_what_it_needs(code, absent):
    assert not loaded_after(code) & absent
