"""An OpenAI-compatible server as a text teacher: vLLM, llama.cpp's server, ``transformers
serve``, or a hosted API, at ``http(s)://HOST:PORT/v1``.

Every sentence is one request for ``settings.model`` with the prompt: ``POST /chat/completions``
(one user message) or ``POST /completions`` (``settings.api``), greedy (temperature 0), at
most ``settings.max_tokens(source)`` tokens. The key, when the server needs one, comes from
the environment variable ``EVOKD_TEACHER_API_KEY`` (else ``OPENAI_API_KEY``) and is sent as
``Authorization: Bearer KEY``; it is never written anywhere.

At most ``settings.concurrency`` requests are in flight; each waits ``settings.timeout``
seconds; a refused connection, a timeout, HTTP 429 or 5xx is retried ``settings.retries``
times with exponential backoff (1, 2, 4, ... seconds), then is an error naming the server.
Every reply is kept in ``settings.reply_cache`` (one JSON file per request, keyed by the
sha256 of model, prompt and settings, written atomically), so a killed run resumed, or rerun,
does not pay for a request twice. The model is checked against ``GET /models`` first: a name
the server does not have is an error naming the ones it has.
"""

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from evokd import files
from evokd.errors import EvokdError

from .engine import TextTeacher, api_key, folder_digest, reply_cache_path, reply_translation

logger = logging.getLogger(__name__)

RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class ServerError(EvokdError):
    """The server answered with an error that retrying does not fix."""


class ServerTeacher(TextTeacher):
    """A model served behind an OpenAI-compatible API (see the module doc)."""

    kind = "server"

    def __init__(self, url, settings):
        super().__init__(str(url).rstrip("/"), settings)
        if not settings.model:
            raise EvokdError(f"--teacher {url}: a server teacher needs --teacher-model NAME")
        self.calls = 0  # requests sent (cached replies are not)
        self.cached = 0
        self.lock = threading.Lock()
        self.check_model()

    def digest(self):
        return folder_digest(f"{self.path} {self.settings.model}")

    # --- HTTP ---------------------------------------------------------------------------

    def request(self, route, body=None):
        """The JSON answer of ``route`` (GET, or POST with ``body``), retried as documented."""
        url = f"{self.path}/{route}"
        headers = {"Content-Type": "application/json"}
        key = api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if body is not None else None
        problem = None
        for attempt in range(self.settings.retries + 1):
            if attempt:
                time.sleep(2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.settings.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:500]
                if exc.code not in RETRY_STATUS:
                    raise ServerError(
                        f"--teacher {self.path}: {route} answered HTTP {exc.code}: {detail}"
                    ) from exc
                problem = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                problem = str(getattr(exc, "reason", exc))
            except ValueError as exc:  # not JSON
                problem = f"a reply that is not JSON ({exc})"
            logger.warning("%s: try %d failed (%s)", url, attempt + 1, problem)
        raise EvokdError(
            f"--teacher {self.path}: no usable answer from {url} after "
            f"{self.settings.retries + 1} tries ({problem}); is the server running there?"
        )

    def check_model(self):
        """An error unless the server lists ``settings.model`` (when it lists models)."""
        try:
            listed = self.request("models")
        except ServerError:
            return  # a server without /models: the first request will tell
        names = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
        if names and self.settings.model not in names:
            raise EvokdError(
                f"--teacher-model {self.settings.model}: {self.path} does not serve it "
                f"(it serves: {', '.join(map(str, names))})"
            )

    # --- one sentence -------------------------------------------------------------------

    def body(self, source):
        max_tokens = self.settings.max_tokens(source)
        body = {"model": self.settings.model, "max_tokens": max_tokens, "temperature": 0}
        if self.settings.api == "chat":
            return dict(body, messages=[{"role": "user", "content": self.ask(source)}])
        return dict(body, prompt=self.ask(source))

    def cache_path(self, body, **extra):
        return reply_cache_path(
            self.settings.reply_cache, {"api": self.settings.api, **body, **extra}
        )

    def ask_server(self, source):
        """``(reply text, finish reason)`` for one sentence, from the cache or the server."""
        return read_answer(self.answer(self.body(source)))

    def answer(self, body, sample=None):
        """The server's JSON answer to ``body``, from the reply cache (keyed by ``body``, and
        ``sample`` when given) or the server; counted in :attr:`usage`."""
        path = self.cache_path(body) if sample is None else self.cache_path(body, sample=sample)
        if path is not None and path.is_file():
            with self.lock:
                self.cached += 1
                self.usage["cached"] += 1
            return files.read_json(path)
        route = "chat/completions" if self.settings.api == "chat" else "completions"
        start = time.perf_counter()
        answer = self.request(route, body)
        tokens = answer.get("usage") if isinstance(answer, dict) else None
        with self.lock:
            self.calls += 1
            self.usage["calls"] += 1
            self.usage["seconds"] += time.perf_counter() - start
            for key in ("prompt_tokens", "completion_tokens"):
                if isinstance(tokens, dict) and isinstance(tokens.get(key), int):
                    self.usage[key] += tokens[key]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.write_json(path, answer)
        return answer

    def complete(self, prompts, max_tokens, temperature=0.0, samples=1):
        """See :meth:`TextTeacher.complete`: one request per prompt and sample, at most
        ``settings.concurrency`` at once; the sample number is part of the cache key."""
        jobs = [(self.prompt_body(p, max_tokens, temperature), k) for p in prompts
                for k in range(samples)]  # fmt: skip
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            texts = list(pool.map(lambda job: read_answer(self.answer(*job))[0], jobs))
        return [texts[i : i + samples] for i in range(0, len(texts), samples)]

    def prompt_body(self, prompt, max_tokens, temperature):
        """The request for ``prompt`` as :meth:`complete` sends it."""
        body = {"model": self.settings.model, "max_tokens": max_tokens, "temperature": temperature}
        if self.settings.api == "chat":
            return dict(body, messages=[{"role": "user", "content": prompt}])
        return dict(body, prompt=prompt)

    def translate_batch(self, sources):
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            answers = list(pool.map(self.ask_server, sources))  # in the order of sources
        return [reply_translation(text, reason == "length") for text, reason in answers]


def read_answer(answer):
    """``(text, finish reason)`` of an OpenAI-style answer; ``(None, None)`` when it holds no
    choice with text (counted as unparsed, never guessed)."""
    try:
        choice = answer["choices"][0]
        reason = choice.get("finish_reason")
        if "message" in choice:
            return choice["message"].get("content"), reason
        return choice.get("text"), reason
    except (KeyError, IndexError, TypeError, AttributeError):
        return None, None
