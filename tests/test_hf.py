"""megatron_pause.hf: importable without megatron-core; the pause is never generated."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from megatron_pause.hf import ForbidTokensLogitsProcessor, pause_token_id  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importable_without_megatron_core():
    # A finder that refuses megatron makes any import of it (direct or indirect) fail.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'megatron' or name.startswith('megatron.'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import megatron_pause.hf, megatron_pause.hf.generation\n"
        "assert not any(m == 'megatron' or m.startswith('megatron.') for m in sys.modules)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_forbid_tokens_processor_masks_only_the_pause():
    scores = torch.randn(3, 10)
    scores[:, 4] = 100.0  # the pause would win
    out = ForbidTokensLogitsProcessor([4])(torch.zeros(3, 1, dtype=torch.long), scores)
    assert torch.isneginf(out[:, 4]).all()
    assert torch.equal(out[:, [0, 1, 2, 3, 5, 6, 7, 8, 9]], scores[:, [0, 1, 2, 3, 5, 6, 7, 8, 9]])
    assert out.argmax(-1).ne(4).all()


class _Config:
    pause_token_id = 7


class _Model:
    config = _Config()


class _Tok:
    unk_token_id = 0

    def __init__(self, pause):
        self.pause = pause

    def convert_tokens_to_ids(self, token):
        return self.pause if token == "<pause>" else 0


def test_pause_id_from_config_or_tokenizer_and_mismatch_is_an_error():
    assert pause_token_id(_Model(), None) == 7
    assert pause_token_id(None, _Tok(5)) == 5
    assert pause_token_id(_Model(), _Tok(7)) == 7
    with pytest.raises(ValueError, match="pause_token_id is 7"):
        pause_token_id(_Model(), _Tok(5))
    with pytest.raises(ValueError, match="pass pause_id"):
        pause_token_id(None, _Tok(0))  # unknown piece
