"""A tiny Llama-style causal LM built from a config with random weights and saved as a user
saves it, and `transformers serve` on it, offline on 127.0.0.1 (tests/test_teachers.py,
tests/test_patch_llm.py)."""

import contextlib
import gzip
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import utils

BIN = Path(sys.executable).parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def corpus_lines(lang, n=300):
    with gzip.open(utils.CORPUS / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
        return [next(f).strip() for _ in range(n)]


def llama(root, positions=512):
    """A 1-layer Llama-style causal LM with a byte-level BPE tokenizer and a chat template,
    reading at most ``positions`` tokens (prompt and reply)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    bpe.train_from_iterator(corpus_lines("de") + corpus_lines("en"), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>")  # fmt: skip
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=positions,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    folder = root / "llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(folder, log_path):
    """`transformers serve` on the model ``folder``, offline, on 127.0.0.1; yields its
    ``http://127.0.0.1:PORT/v1``; stopped after. Skips when the command is not installed."""
    command = BIN / "transformers"
    if not command.exists():
        pytest.skip(
            "transformers' serve command is not installed (pip install 'transformers[serving]')"
        )
    port = free_port()
    cmd = [str(command), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", "--log-level", "warning"]  # fmt: skip
    log = open(log_path, "w")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(Path(log_path).read_text()[-2000:])
                time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
