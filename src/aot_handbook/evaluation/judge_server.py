"""A small OpenAI-compatible judge server (standard library only) for offline AlpacaEval runs.

It serves ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` the way vLLM does,
so alpaca_eval's ``openai_completions`` decoder talks to it exactly as to a Llama-3-70B judge
behind vLLM. Behind it sits a *program* judge, a registered task's (``Task.judge``: one answer's score in
[0, 1]): it reads the instruction and the two outputs out of AlpacaEval's pairwise prompt
(``alpaca_eval_clf.txt``: identifiers ``m`` and ``M``), judges each, and answers the identifier of the better
one, with log-probs (``logprob_parser``): the higher score wins, equal scores are a tie (equal probability).
It also answers the 1-10 rating prompt of the data stage's ``openai_judge`` scorer.

    aot-judge-server --task tiny --port 8011
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_INSTRUCTION = re.compile(r'"instruction": """(.*?)""",', re.S)
_OUTPUT = re.compile(r'"model_identifier": "(\w+)",\s*"output": """(.*?)"""', re.S)


def program_preference(prompt: str, judge) -> dict[str, float]:
    """Probabilities of identifiers ``m`` and ``M`` being the better output, judged by ``judge(prompt, answer)``."""
    instruction = _INSTRUCTION.search(prompt)
    outputs = dict(_OUTPUT.findall(prompt))
    if instruction is None or set(outputs) != {"m", "M"}:
        raise ValueError("not an AlpacaEval pairwise prompt (alpaca_eval_clf.txt format)")
    score = {k: judge(instruction.group(1), v) for k, v in outputs.items()}
    if score["m"] == score["M"]:
        return {"m": 0.5, "M": 0.5}
    return {"m": 1.0, "M": 0.0} if score["m"] > score["M"] else {"m": 0.0, "M": 1.0}


_RATING = re.compile(r"### Instruction\n(.*?)\n\n### Response\n(.*?)\n\n### Rating", re.S)


def program_rating(prompt: str, judge) -> str | None:
    """A 1-10 rating prompt (``aot_handbook.scorers.JUDGE_TEMPLATE``): 1 + 9 x the judge's score in [0, 1] ("10" for
    a right answer, "1" for a wrong one); None for any other prompt."""
    match = _RATING.search(prompt)
    return None if match is None else f"{1 + 9 * float(judge(match.group(1), match.group(2))):g}"


def _logprob(p: float) -> float:
    return math.log(p) if p > 0 else -100.0


def _choice_payload(prompt: str, chat: bool, judge) -> dict:
    rating = program_rating(prompt, judge)
    if rating is not None:  # pointwise rating (on-policy data), plain text
        return {"index": 0, "finish_reason": "stop", **({"message": {"role": "assistant", "content": rating}}
                                                        if chat else {"text": rating})}
    probs = program_preference(prompt, judge)
    best = max(probs, key=probs.get)
    top = [{"token": t, "logprob": _logprob(p), "bytes": list(t.encode())} for t, p in probs.items()]
    if chat:
        return {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": best},
                "logprobs": {"content": [{"token": best, "logprob": _logprob(probs[best]),
                                          "bytes": list(best.encode()), "top_logprobs": top}]}}
    return {"index": 0, "finish_reason": "length", "text": best,
            "logprobs": {"tokens": [best], "token_logprobs": [_logprob(probs[best])],
                         "top_logprobs": [{t["token"]: t["logprob"] for t in top}]}}


class _Handler(BaseHTTPRequestHandler):
    model_name = "program-judge"
    api_key: str | None = None
    requests_seen: list = []
    judge = None  # judge(prompt, answer) -> score in [0, 1]

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.api_key is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {self.api_key}":
            return True
        self._send(401, {"error": {"message": "invalid api key", "type": "authentication_error"}})
        return False

    def do_GET(self):
        if not self._authorized():
            return
        if self.path.rstrip("/").endswith("/models"):
            return self._send(200, {"object": "list", "data": [{"id": self.model_name, "object": "model"}]})
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        chat = self.path.rstrip("/").endswith("/chat/completions")
        if not chat and not self.path.rstrip("/").endswith("/completions"):
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        prompt = "\n".join(m.get("content", "") for m in body.get("messages", [])) if chat else body.get("prompt", "")
        if isinstance(prompt, list):
            prompt = prompt[0]
        try:
            choice = _choice_payload(prompt, chat, type(self).judge)
        except ValueError as exc:
            return self._send(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
        type(self).requests_seen.append(body.get("model"))
        self._send(200, {"id": f"judge-{time.time_ns()}", "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": body.get("model", self.model_name),
                         "choices": [choice],
                         "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 1,
                                   "total_tokens": len(prompt) // 4 + 1}})


def serve(judge, port: int = 0, *, host: str = "127.0.0.1", model_name: str = "program-judge",
          api_key: str | None = None):
    """Start the server for ``judge(prompt, answer) -> score in [0, 1]`` (e.g. a registered task's ``Task.judge``) in
    a daemon thread; returns (server, base_url). ``server.shutdown()`` stops it."""
    handler = type("Handler", (_Handler,), {"model_name": model_name, "api_key": api_key, "requests_seen": [],
                                             "judge": staticmethod(judge)})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/v1"


def serve_forever(judge, port: int, model_name: str = "program-judge") -> None:
    """``aot-judge-server``: serve until interrupted (Ctrl-C)."""
    server, url = serve(judge, port, model_name=model_name)
    print(f"program judge at {url} (model {model_name}); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()
