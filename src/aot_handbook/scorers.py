"""Scorers for sampled answers: ``score(prompts, completions) -> list[float]`` (higher is better).

- a registered task's program judge (``aot_handbook.tasks``: ``Task.scorer`` names it, ``Task.judge`` scores one
  answer in [0, 1]; e.g. ``tiny_judge``, the tiny task's: 1.0 right, 0.0 wrong);
- ``reward_model``: a transformers sequence-classification model (one logit) from a local folder or the
  hub, each (prompt, answer) rendered with the reward model's own chat template when it has one.
- ``openai_judge``: an OpenAI-compatible chat endpoint (OpenAI, vLLM, the loopback judge server) asked for a
  1-10 rating; the key comes from the environment variable named by ``judge_api_key_env`` and is never stored.

Each scorer is built (model loaded, endpoint named) before any sampling, so a bad name or path fails first.
"""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .model_utils import ensure_pad_token, looks_local
from .tasks import task_for_scorer, tasks

SCORERS = ("reward_model", "openai_judge")  # and each registered task's program judge (scorer_names)

# The rating prompt of ``openai_judge``: ``{prompt}`` and ``{completion}`` are filled in. The loopback judge
# server (evaluation/judge_server.py) reads the instruction and the response between these section headers.
JUDGE_TEMPLATE = """Rate how well the response answers the instruction, from 1 (wrong or useless) to 10 \
(fully correct and helpful). Reply with the number only.

### Instruction
{prompt}

### Response
{completion}

### Rating
"""
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def scorer_names() -> list[str]:
    """Every scorer a pairs recipe may name: the registered tasks' program judges, then ``SCORERS``."""
    return [*(t.scorer for t in tasks() if t.scorer), *SCORERS]


class TaskJudge:
    """A registered task's program judge (``Task.judge``), under the task's scorer name."""

    def __init__(self, task):
        self.task = task

    def describe(self) -> dict:
        return {"scorer": self.task.scorer}

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [float(self.task.judge(p, c)) for p, c in zip(prompts, completions)]


class RewardModel:
    """``AutoModelForSequenceClassification`` with one output: its logit is the score."""

    def __init__(self, name: str, *, batch_size: int = 16, dtype: str = "auto"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if looks_local(name) and not Path(name).expanduser().is_dir():
            raise FileNotFoundError(f"key 'reward_model': no such folder: {name}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                name, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
        except OSError as err:  # not on the hub, gated, or offline without a cached copy
            raise ValueError(f"key 'reward_model': could not load {name!r} as a sequence classifier: {err}") from err
        if self.model.config.num_labels != 1:
            raise ValueError(f"key 'reward_model': {name!r} has {self.model.config.num_labels} outputs; "
                             "a reward model has one (num_labels=1)")
        ensure_pad_token(self.tokenizer)
        if self.model.config.pad_token_id is None:  # the classifier reads the last non-pad token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
        self.name, self.batch_size = name, batch_size

    def describe(self) -> dict:
        return {"scorer": "reward_model", "reward_model": self.name,
                "chat_template": bool(getattr(self.tokenizer, "chat_template", None))}

    def texts(self, prompts: list[str], completions: list[str]) -> list[str]:
        """What the reward model reads: its chat template over a user and an assistant turn, else the plain text."""
        if getattr(self.tokenizer, "chat_template", None):
            return [self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False)
                for p, c in zip(prompts, completions)]
        return [p + c for p, c in zip(prompts, completions)]

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        texts, out = self.texts(prompts, completions), []
        templated = bool(getattr(self.tokenizer, "chat_template", None))  # the template holds BOS already
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                                 add_special_tokens=not templated).to(self.model.device)
            out += self.model(**enc).logits[:, 0].float().tolist()
        return out


class OpenAIJudge:
    """A 1-10 rating per answer from an OpenAI-compatible chat endpoint (requests in parallel threads)."""

    def __init__(self, base_url: str | None, model: str | None, *, api_key_env: str | None,
                 template: str | None = None, concurrency: int = 8):
        from openai import OpenAI

        if not base_url or not model:
            raise ValueError("scorer 'openai_judge' needs keys 'judge_base_url' and 'judge_model'")
        key = "EMPTY"  # servers without authentication (vLLM by default, the loopback judge)
        if api_key_env:
            if not os.environ.get(api_key_env):
                raise ValueError(f"key 'judge_api_key_env': environment variable {api_key_env} is not set")
            key = os.environ[api_key_env]
        self.template = template or JUDGE_TEMPLATE
        if "{prompt}" not in self.template or "{completion}" not in self.template:
            raise ValueError("key 'judge_template' must contain {prompt} and {completion}")
        self.client = OpenAI(base_url=base_url, api_key=key, max_retries=5)
        self.base_url, self.model, self.api_key_env, self.concurrency = base_url, model, api_key_env, concurrency

    def describe(self) -> dict:  # the key's variable name only, never its value
        return {"scorer": "openai_judge", "judge_base_url": self.base_url, "judge_model": self.model,
                "judge_api_key_env": self.api_key_env, "judge_template": self.template}

    def _one(self, prompt: str, completion: str) -> float:
        reply = self.client.chat.completions.create(
            model=self.model, temperature=0.0, max_tokens=16,
            messages=[{"role": "user", "content": self.template.format(prompt=prompt, completion=completion)}])
        match = _NUMBER.search(reply.choices[0].message.content or "")
        return float(match.group()) if match else math.nan  # unparseable: the answer is left out of the data

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, prompts, completions))


def build_scorer(config) -> TaskJudge | RewardModel | OpenAIJudge:
    """The scorer a pairs recipe names (``config``: a PairsConfig); raises naming the key on bad input."""
    task = task_for_scorer(config.scorer)
    if task is not None:
        return TaskJudge(task)
    if config.scorer == "reward_model":
        if not config.reward_model:
            raise ValueError("scorer 'reward_model' needs key 'reward_model' (a local folder or a hub id)")
        return RewardModel(config.reward_model, batch_size=config.batch_size, dtype=config.dtype)
    if config.scorer == "openai_judge":
        return OpenAIJudge(config.judge_base_url, config.judge_model, api_key_env=config.judge_api_key_env,
                           template=config.judge_template, concurrency=config.judge_concurrency)
    raise ValueError(f"key 'scorer': unknown scorer {config.scorer!r}; expected one of {scorer_names()}")
