"""What ``max_length`` cuts from the rows TRL actually trains on, counted per split, and a refusal above a share.

TRL 1.16 tokenizes preference data once (``DPOTrainer._prepare_dataset`` / ``KTOTrainer._prepare_dataset``):
a paired row becomes ``prompt_ids``, ``chosen_ids`` and ``rejected_ids``, an unpaired row ``prompt_ids``,
``completion_ids`` and ``label`` (completions end with EOS). It then drops, without a word, every row whose
prompt alone fills ``max_length`` (DPO only with ``truncation_mode: keep_start``). The collators cut each
sequence prompt + answer to ``max_length`` tokens: its first ``max_length`` (``keep_start``, the default and,
for KTO, the only mode) or its last (DPO ``keep_end``, deprecated). TRL 1.16 has no ``max_prompt_length``:
``max_length`` is the one key.

So with 31-token prompts and ``max_length: 32`` every answer is cut to its first token, and a pair whose two
answers start alike trains on chosen == rejected: a zero margin the loss pushes on, which no text-level check
sees. :func:`count_truncation` counts, on the tokenized rows, the rows TRL dropped, the rows whose prompt or
answers are cut, and the pairs (paired) or prompts (unpaired: a positive and a negative answer) that are
identical in the tokens trained on; :func:`check_truncation` refuses above a share, naming the keys to change
and the lengths that would keep every row whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import UserError

KEEP_START, KEEP_END = "keep_start", "keep_end"


class TruncationError(UserError):
    """``max_length`` cuts more of the data than allowed (the message names the keys to change)."""


@dataclass
class SplitTruncation:
    """Counts for one split; ``rows`` are the rows TRL kept, ``dropped`` those it removed."""

    split: str
    kind: str  # "paired" or "unpaired"
    max_length: int | None
    truncation_mode: str
    rows: int = 0
    dropped: int = 0  # the prompt alone fills max_length: TRL removed the row
    prompt_cut: int = 0  # rows whose prompt lost tokens (keep_end only; keep_start rows with that are dropped)
    answer_cut: int = 0  # rows where some answer (chosen, rejected or the completion) lost tokens
    chosen_cut: int = 0  # paired: the chosen answer lost tokens
    rejected_cut: int = 0  # paired: the rejected answer lost tokens
    identical: int = 0  # paired: pairs with chosen == rejected in the tokens trained on (and not before)
    # unpaired: prompts with a positive and a negative answer equal in the tokens trained on (and not before)
    longest: int = 0  # the longest prompt + answer, in tokens
    lengths: list[int] = field(default_factory=list, repr=False)  # every prompt + answer length (for quantiles)

    @property
    def total(self) -> int:
        return self.rows + self.dropped

    def share(self, count: int) -> float:
        return count / self.total if self.total else 0.0

    def length_quantile(self, q: float) -> int:
        if not self.lengths:
            return 0
        ordered = sorted(self.lengths)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self) -> str:
        """One line for the training log."""
        pct = lambda n: f"{n} ({100 * self.share(n):.1f}%)"  # noqa: E731
        what = "pairs" if self.kind == "paired" else "rows"
        text = (f"truncation, {self.split} split (max_length {self.max_length}, {self.truncation_mode}): "
                f"{self.total} {what}; dropped (prompt fills max_length) {pct(self.dropped)}; "
                f"answer cut {pct(self.answer_cut)}")
        if self.prompt_cut:
            text += f"; prompt cut {pct(self.prompt_cut)}"
        same = "chosen == rejected" if self.kind == "paired" else "a positive == a negative"
        text += f"; {same} in the tokens trained on {pct(self.identical)}; longest prompt+answer {self.longest}"
        return text

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("lengths")
        return d


def _kept(prompt: list, answer: list, max_length: int | None, mode: str) -> tuple[tuple, int]:
    """The tokens a collator keeps of prompt + answer, and how many of them are the prompt."""
    seq = list(prompt) + list(answer)
    if max_length is None or len(seq) <= max_length:
        return tuple(seq), len(prompt)
    if mode == KEEP_END:
        return tuple(seq[-max_length:]), max(0, len(prompt) - (len(seq) - max_length))
    return tuple(seq[:max_length]), min(len(prompt), max_length)


def _columns(rows) -> list[dict]:
    """Rows of a datasets.Dataset (only the token columns, read in batches) or any iterable of dicts."""
    names = getattr(rows, "column_names", None)
    if names is None:
        return list(rows)
    keep = [c for c in ("prompt_ids", "chosen_ids", "rejected_ids", "completion_ids", "label") if c in names]
    out = []
    for batch in rows.select_columns(keep).iter(batch_size=4096):
        out += [dict(zip(batch, values)) for values in zip(*batch.values())]
    return out


def count_truncation(rows, *, max_length: int | None, truncation_mode: str = KEEP_START, split: str = "train",
                     rows_before: int | None = None) -> SplitTruncation:
    """Counts for the tokenized rows of one split (a ``datasets.Dataset`` as TRL's ``_prepare_dataset`` returns
    it, or dicts with the same keys). ``rows_before``: the split's length before TRL tokenized it, so the
    rows TRL dropped are counted too."""
    if truncation_mode not in (KEEP_START, KEEP_END):
        raise ValueError(f"truncation_mode must be {KEEP_START!r} or {KEEP_END!r}, got {truncation_mode!r}")
    data = _columns(rows)
    paired = bool(data) and "chosen_ids" in data[0]
    if data and not paired and "completion_ids" not in data[0]:
        raise ValueError(f"{split} split: tokenized rows need prompt_ids with chosen_ids/rejected_ids (paired) or "
                         f"completion_ids (unpaired); got keys {sorted(data[0])}")
    out = SplitTruncation(split, "paired" if paired else "unpaired", max_length, truncation_mode, rows=len(data))
    if rows_before is not None:
        if rows_before < len(data):
            raise ValueError(f"{split} split: rows_before ({rows_before}) < tokenized rows ({len(data)})")
        out.dropped = rows_before - len(data)
    by_prompt: dict[tuple, dict[bool, set]] = {}  # unpaired: prompt -> label -> kept answers
    whole_by_prompt: dict[tuple, dict[bool, set]] = {}
    for row in data:
        prompt = row["prompt_ids"]
        answers = [row["chosen_ids"], row["rejected_ids"]] if paired else [row["completion_ids"]]
        kept = [_kept(prompt, a, max_length, truncation_mode) for a in answers]
        lengths = [len(prompt) + len(a) for a in answers]
        out.lengths += lengths
        out.longest = max(out.longest, *lengths)
        cut = [len(k[0]) - k[1] < len(a) for k, a in zip(kept, answers)]  # fewer answer tokens kept
        out.answer_cut += any(cut)
        out.prompt_cut += any(k[1] < len(prompt) for k in kept)
        if paired:
            out.chosen_cut += cut[0]
            out.rejected_cut += cut[1]
            out.identical += kept[0] == kept[1] and list(answers[0]) != list(answers[1])
        else:
            label = bool(row.get("label"))
            by_prompt.setdefault(tuple(prompt), {True: set(), False: set()})[label].add(kept[0])
            whole_by_prompt.setdefault(tuple(prompt), {True: set(), False: set()})[label].add(tuple(answers[0]))
    if not paired:
        out.identical = sum(bool(s[True] & s[False]) and not (whole_by_prompt[p][True] & whole_by_prompt[p][False])
                            for p, s in by_prompt.items())
    return out


def check_truncation(reports: list[SplitTruncation], *, source: str = "recipe", max_dropped_share: float = 0.01,
                     max_cut_share: float = 0.10, max_identical_share: float = 0.01) -> list[str]:
    """The report lines; a :class:`TruncationError` naming the keys to change when, in any split, more than
    ``max_dropped_share`` of the rows were dropped, more than ``max_cut_share`` lost answer tokens, or more
    than ``max_identical_share`` train on chosen == rejected (or on one sequence labelled both ways)."""
    lines, problems = [r.line() for r in reports], []
    for r in reports:
        for count, limit, what in ((r.dropped, max_dropped_share, "dropped because the prompt alone fills it"),
                                   (r.answer_cut, max_cut_share, "with an answer cut"),
                                   (r.identical, max_identical_share,
                                    "with chosen == rejected in the tokens trained on" if r.kind == "paired"
                                    else "prompts whose positive and negative answers are equal once cut")):
            if r.share(count) > limit:
                problems.append(f"{r.split} split: {count} of {r.total} {what} "
                                f"({100 * r.share(count):.1f}% > {100 * limit:g}%)")
    if problems:
        r = max(reports, key=lambda r: r.longest)
        hint = (f"the longest prompt + answer is {r.longest} tokens (99% are within {r.length_quantile(0.99)}); "
                f"raise max_length (now {r.max_length})")
        if any(x.truncation_mode == KEEP_END for x in reports):
            hint += ", or use truncation_mode: keep_start"
        raise TruncationError(f"{source}: max_length cuts the training data: {'; '.join(problems)}. Change key "
                              f"'max_length': {hint}, or shorten the prompts in dataset_mixture")
    return lines
