"""A Hugging Face model folder as a text teacher: a seq2seq translation model (Marian,
NLLB, M2M100, T5, ...) or a causal LM asked with the prompt.

The folder is read as ``save_pretrained`` writes it (``config.json``, the weights, the
tokenizer), offline. ``is_encoder_decoder`` in ``config.json`` decides the kind. A seq2seq
model decodes with beam search (``settings.beam``) and gives each hypothesis's
length-normalised log-probability as its score. A causal LM gets the prompt through its chat
template when its tokenizer has one (else the bare prompt), decodes greedily, and its reply
is read by :func:`evokd.teachers.text.parse_reply`.
"""

import json
import logging
import time
from pathlib import Path

from evokd import files
from evokd.errors import EvokdError

from .engine import TextTeacher, engine_translation, reply_cache_path, reply_translation

logger = logging.getLogger(__name__)


def open_huggingface(path, settings):
    """The teacher for the Hugging Face folder ``path``, by its ``config.json``."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise EvokdError(f"--teacher {path}: config.json is not JSON ({exc})") from exc
    if config.get("is_encoder_decoder"):
        return Seq2SeqTeacher(path, settings)
    return CausalLMTeacher(path, settings)


class HuggingFaceTeacher(TextTeacher):
    """What both kinds share: the tokenizer and the model, loaded once, in eval mode."""

    kind = "huggingface"
    loader = "AutoModelForSeq2SeqLM"

    def __init__(self, path, settings):
        super().__init__(path, settings)
        import transformers

        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
            model_class = getattr(transformers, self.loader)
            self.model = model_class.from_pretrained(str(path)).to(settings.device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise EvokdError(
                f"--teacher {path}: transformers cannot load it as {self.loader} ({exc})"
            ) from exc

    def generate(self, encoded, max_new_tokens, **kwargs):
        import torch

        encoded = {k: v.to(self.settings.device) for k, v in encoded.items()}
        options = {"num_beams": self.settings.beam, "do_sample": False, **kwargs}
        with torch.inference_mode():
            return self.model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                return_dict_in_generate=True,
                output_scores=True,
                **options,
            )

    def new_tokens(self, sequence, start):
        """The generated tokens of ``sequence`` after ``start``, up to the first EOS; and
        whether an EOS was reached."""
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        tokens = sequence[start:].tolist()
        for i, token in enumerate(tokens):
            if token in eos:
                return tokens[:i], True
        return tokens, False


class Seq2SeqTeacher(HuggingFaceTeacher):
    """An encoder-decoder translation model (``AutoModelForSeq2SeqLM``)."""

    def translate_batch(self, sources):
        encoded = self.tokenizer(sources, return_tensors="pt", padding=True)
        caps = [self.settings.max_tokens(line) for line in sources]
        result = self.generate(encoded, max(caps))
        scores = getattr(result, "sequences_scores", None)
        out = []
        for i, (sequence, cap) in enumerate(zip(result.sequences, caps)):
            tokens, ended = self.new_tokens(sequence, 1)  # after the decoder start token
            cut = not ended or len(tokens) >= cap
            text = self.tokenizer.decode(tokens[:cap], skip_special_tokens=True)
            score = float(scores[i]) if scores is not None else None
            out.append(engine_translation(text, cut, score))
        return out


class CausalLMTeacher(HuggingFaceTeacher):
    """A decoder-only LM (``AutoModelForCausalLM``) asked with the prompt, one reply per
    sentence."""

    loader = "AutoModelForCausalLM"

    def __init__(self, path, settings):
        super().__init__(path, settings)
        self.tokenizer.padding_side = "left"  # generated tokens follow every prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def text(self, source):
        return self.chat(self.ask(source))

    def chat(self, prompt):
        """``prompt`` as the model reads it: through its chat template when it has one."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return prompt

    def translate_batch(self, sources):
        """One reply per sentence; with ``settings.reply_cache``, each kept by (model digest,
        prompt, length cap, beam) and read from there when a rerun asks again."""
        model, beam = self.model_digest(), self.settings.beam
        keys = [{"model": model, "translate": self.text(line), "beam": beam,
                 "max_tokens": self.settings.max_tokens(line)} for line in sources]  # fmt: skip
        paths = [reply_cache_path(self.settings.reply_cache, key) for key in keys]
        kept = {i: files.read_json(p) for i, p in enumerate(paths) if p is not None and p.is_file()}
        self.usage["cached"] += len(kept)
        todo = [i for i in range(len(sources)) if i not in kept]
        if todo:
            start = time.perf_counter()
            for i, (reply, cut) in zip(todo, self.replies([sources[i] for i in todo])):
                kept[i] = {"reply": reply, "cut": cut}
                if paths[i] is not None:
                    paths[i].parent.mkdir(parents=True, exist_ok=True)
                    files.write_json(paths[i], {"key": keys[i], **kept[i]})
            self.usage["calls"] += len(todo)
            self.usage["seconds"] += time.perf_counter() - start
        return [reply_translation(kept[i]["reply"], kept[i]["cut"]) for i in range(len(sources))]

    def replies(self, sources):
        """``(reply, cut)`` for every sentence, decoded in one batch."""
        texts = [self.text(line) for line in sources]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        caps = [self.settings.max_tokens(line) for line in sources]
        result = self.generate(encoded, max(caps), pad_token_id=self.tokenizer.pad_token_id)
        start = encoded["input_ids"].shape[1]
        out = []
        for sequence, cap in zip(result.sequences, caps):
            tokens, ended = self.new_tokens(sequence, start)
            cut = not ended or len(tokens) >= cap
            out.append((self.tokenizer.decode(tokens[:cap], skip_special_tokens=True), cut))
        return out

    def model_digest(self):
        """The model folder's digest, computed once."""
        if not hasattr(self, "_model_digest"):
            self._model_digest = self.digest()
        return self._model_digest

    def complete(self, prompts, max_tokens, temperature=0.0, samples=1):
        """See :meth:`TextTeacher.complete`: one prompt at a time (through the chat template),
        sample ``k`` drawn with ``torch.manual_seed(k)``; every reply kept in
        ``settings.reply_cache`` by (model digest, prompt, settings, sample)."""
        import torch

        out = []
        for prompt in prompts:
            replies = []
            for k in range(samples):
                key = {"model": self.model_digest(), "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": temperature, "sample": k}  # fmt: skip
                path = reply_cache_path(self.settings.reply_cache, key)
                if path is not None and path.is_file():
                    self.usage["cached"] += 1
                    replies.append(files.read_json(path)["reply"])
                    continue
                start = time.perf_counter()
                text = self.chat(prompt)
                encoded = self.tokenizer([text], return_tensors="pt", add_special_tokens=False)
                torch.manual_seed(k)
                sampling = {"do_sample": True, "temperature": temperature} if temperature else {}
                result = self.generate(encoded, max_tokens, num_beams=1, **sampling,
                                       pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
                prompt_tokens = encoded["input_ids"].shape[1]
                tokens, _ = self.new_tokens(result.sequences[0], prompt_tokens)
                reply = self.tokenizer.decode(tokens, skip_special_tokens=True)
                self.usage["calls"] += 1
                self.usage["seconds"] += time.perf_counter() - start
                self.usage["prompt_tokens"] += prompt_tokens
                self.usage["completion_tokens"] += len(tokens)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    files.write_json(path, {"key": key, "reply": reply})
                replies.append(reply)
            out.append(replies)
        return out
