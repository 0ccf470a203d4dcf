"""Packed preference batches: each prompt once, several pairs per row, no compute on padding (a gap in TRL).

TRL's DPO collator sends every pair as two rows, ``prompt + chosen`` and ``prompt + rejected``, right-padded to
the batch's longest row, so the prompt goes through the model twice and padding through every layer. With a
causal model the prompt's hidden states do not depend on what follows, so a pair can be one *segment*:

    segment:   p0 p1 .. p[P-1] | c0 .. c[C-1] | p[P-1]' r0 .. r[R-1]
    positions: 0  1  .. P-1    | P  .. P+C-1  | P-1     P  .. P+R-1
    attends:   the prompt      | prompt, own  | prompt (but p[P-1]), own

``p[P-1]'`` is a copy of the last prompt token (same token, same position, same keys), so ``r0`` is predicted
by the position just before it and the usual shifted labels (TRL's fused LM head) score both completions. A
query sees a key when both are in the same segment, the key's position is not later, and the key is in the
shared prompt or in the query's own branch. Tokens per pair: ``P + C + 1 + R`` instead of ``2 (P + max(C, R))``.

Layouts (``Layout``; the trainers pick one per model in ``layout_for``):

- one pair per row (``aot_padding_free: false``): each row one segment, right-padded to the longest.
- padding-free (``aot_padding_free``, default): the segments of a batch in as few rows as pay off
  (``plan_rows``: balanced rows, at most ``aot_row_tokens`` tokens, their number chosen by a cost model
  of linear work against attention), position ids restarting in every segment, only the short tail of each
  row padded. Eager and SDPA take a dense ``(rows, 1, L, L)`` mask built from the segments, FlexAttention a
  ``BlockMask`` from the same segments (its empty blocks skipped); transformers uses a 4-D mask as given
  (``masking_utils._preprocess_mask_arguments``).
- varlen (FlashAttention 2/3, padding-free): flash-attention takes no custom mask, only sequences. In
  transformers 5.23 ``_flash_attention_forward`` treats one row whose position ids restart at 0 as packed
  sequences (``_is_packed_sequence``: batch size 1, positions not one ``arange``), cuts it where the position
  is 0 (``prepare_fa_kwargs_from_position_ids`` -> ``cu_seqlens``) and runs ``flash_attn_varlen_func``, each
  sequence causal on its own (and its sliding window, if any, inside it, as in two rows). The shared-prompt
  tree cannot be said that way, so each answer is its own sequence (prompt + chosen, prompt + rejected: the
  prompt repeated) and the whole batch is one row: still no padding, no masked-out attention.
- segments (SDPA, padding-free, the default for SDPA models): a dense mask makes every query of a row pay for
  every key of the row, its other segments' included, so the planner above trades padding against attention.
  SDPA is run instead segment by segment (``segment_sdpa``, registered in transformers as ``SEGMENTS``; the
  trainers set it on their SDPA models, and it is transformers' SDPA for every other call): the whole batch is
  one row (no padding in the linear layers) and attention costs each segment's own length squared (no query
  meets another segment's keys). The row carries a ``(1, 3, 1, N)`` integer description of its segments
  (segment, position, branch) in place of the mask; any other attention refuses it. Where the planner keeps
  one segment per row (equal lengths: nothing to save), the rows and the mask stay as they are.
- plain sequences (``pack_sequences``: the unpaired trainer's rows, prompt + completion): each TRL row its
  own segment, in the same rows (masks), one row of segments, or one varlen row.

Every scored position keeps a map back to its TRL row and column (``PackedRows.unpack``), so per-row sums
come back in TRL's order and shape and every loss downstream is unchanged. The log-probs equal the two-row
forward's up to float rounding (tests/unit/test_packing.py, tests/unit/test_packing_padfree.py, per architecture).

``completion_logps`` (every layout) runs the LM head only where a label is scored: TRL's fused head
scores every position of every row off CUDA/XPU (prompt, padding and all; on Triton devices it keeps
only the scored ones), and with a 32k vocabulary the head is most of a small model's work.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

# Architectures whose forward takes position_ids and a custom 4-D mask as given, checked against
# the two-row forward in tests/unit/test_packing.py. Others use TRL's layout.
# (GPT-2, for one, is not: its packed log-probs differ; see the test.)
MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "phi", "phi3", "granite", "olmo2",
               "starcoder2", "cohere")
ATTENTIONS = ("eager", "sdpa")  # a dense 4-D mask, as given
FLEX = "flex_attention"  # a BlockMask
SEGMENTS = "aot_sdpa_segments"  # SDPA segment by segment over one padding-free row (segment_sdpa)
MAX_ROW_TOKENS = 4096  # aot_row_tokens' default: a (rows, 1, L, L) boolean mask stays at 16 MiB a row
_SHARED, _CHOSEN, _REJECTED, _PAD = 0, 1, 2, 3


def attention_kind(attention: str | None) -> str | None:
    """How a packed batch reaches this attention: ``mask`` (eager, SDPA), ``segments`` (SDPA segment by segment,
    or a mask), ``flex`` (a BlockMask), ``varlen`` (flash-attention: sequences from the position ids alone),
    None (none of these)."""
    attention = attention or "eager"
    if attention == SEGMENTS:
        return "segments"
    if attention in ATTENTIONS:
        return "mask"
    if attention == FLEX:
        return "flex"
    # transformers' is_flash_attention_requested: flash_attention_2/3 and the kernels-hub flash variants
    return "varlen" if "flash" in attention else None


def model_attention(model) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


@dataclass(frozen=True)
class Layout:
    """How a trainer packs its batches (``layout_for``): several segments per row or one, the shared-prompt
    tree or each answer its own sequence, one varlen row (flash-attention) or masked rows."""

    padding_free: bool = True  # several segments per row (False: one per row, right-padded)
    share_prompt: bool = True  # pairs: the tree (False: each answer its own sequence, the prompt repeated)
    varlen: bool = False  # one row, no mask: flash-attention reads the sequences from the position ids
    max_tokens: int = MAX_ROW_TOKENS  # the most tokens a masked row holds (or its longest segment)
    attention_tokens: float | None = None  # plan_rows' cost model (attention_tokens()); None: fewest rows
    segments: bool = False  # SDPA segment by segment: one row wherever plan_rows would put several in a row


ONE_PAIR_PER_ROW = Layout(padding_free=False)


@dataclass
class PackedRows:
    """A batch's segments in rows. ``segment`` tells them apart (-1: padding), ``branch`` a pair's parts;
    ``source`` maps each scored next-token target to the TRL row it scores (-1: none), and the position of
    its token is its TRL column, so ``unpack`` puts per-token values back in TRL's rows."""

    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L): restarting at 0 in every segment; also the token's TRL column
    labels: torch.Tensor  # (R, L): completion tokens, -100 elsewhere
    segment: torch.Tensor  # (R, L) long
    branch: torch.Tensor  # (R, L) long
    source: torch.Tensor  # (R, L - 1) long, over the shifted per-token log-probs
    n_sources: int  # TRL rows: [chosen..., rejected...] for pairs, one per sequence otherwise
    width: int  # TRL's row width
    varlen: bool = False  # one row for flash-attention's varlen path: no mask is passed
    per_segment: bool = False  # one row whose attention runs segment by segment (SEGMENTS): no mask is built

    @property
    def visible(self) -> torch.Tensor:
        """(R, L, L) bool: query i sees key j (the same segment, not later, shared prompt or own branch)."""
        seg, pos, br = self.segment, self.position_ids, self.branch
        return ((seg[:, None, :] == seg[:, :, None]) & (pos[:, None, :] <= pos[:, :, None])
                & ((br[:, None, :] == _SHARED) | (br[:, None, :] == br[:, :, None])))

    @property
    def chosen_mask(self) -> torch.Tensor:  # (R, L - 1): targets of chosen rows (pairs)
        return (self.source >= 0) & (self.source < self.n_sources // 2)

    @property
    def rejected_mask(self) -> torch.Tensor:
        return self.source >= self.n_sources // 2

    def block_mask(self):
        """The same visibility as a FlexAttention ``BlockMask`` (blocks with no visible pair are skipped)."""
        from torch.nn.attention.flex_attention import create_block_mask

        seg, pos, br = self.segment, self.position_ids, self.branch

        def mask_mod(b, h, q, k):
            own = (br[b, k] == _SHARED) | (br[b, k] == br[b, q])
            return (seg[b, q] == seg[b, k]) & (pos[b, k] <= pos[b, q]) & own

        rows, length = seg.shape
        return create_block_mask(mask_mod, rows, None, length, length, device=seg.device)

    def model_kwargs(self, attention: str) -> dict:
        """Model inputs for this attention: SDPA a boolean mask, eager an additive one (0 or the float32 minimum),
        flex_attention a BlockMask, flash-attention none (its varlen path reads the position ids), a row of
        segments (``SEGMENTS``) the ``(1, 3, 1, N)`` description ``segment_sdpa`` reads."""
        kwargs = {"input_ids": self.input_ids, "position_ids": self.position_ids}
        kind = attention_kind(attention)
        if self.per_segment:
            if kind != "segments":
                raise ValueError(f"attention {attention!r} cannot run a row segment by segment (needs {SEGMENTS!r})")
            description = torch.stack([self.segment, self.position_ids, self.branch], dim=1)[:, :, None]
            return {**kwargs, "attention_mask": description}
        if kind == "varlen":
            if not self.varlen:
                raise ValueError(f"attention {attention!r} needs the varlen layout (one row, no mask)")
            return kwargs
        if kind == "flex":
            return {**kwargs, "attention_mask": self.block_mask()}
        mask = self.visible[:, None]
        if attention not in ("sdpa", SEGMENTS):
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        return {**kwargs, "attention_mask": mask}

    def unpack(self, per_token: torch.Tensor) -> torch.Tensor:
        """``(R, L - 1)`` per-target values -> TRL's ``(n_sources, width - 1)`` (0 where nothing is scored)."""
        scored = self.source >= 0
        rows, cols = self.source[scored], self.position_ids[:, 1:][scored] - 1
        out = per_token.new_zeros(self.n_sources, self.width - 1)
        return out.index_put((rows, cols), per_token[scored])

    def stats(self) -> dict:
        """Tokens (real positions), positions (rows x length), the padding share, rows and segments."""
        tokens, positions = int((self.segment >= 0).sum()), self.input_ids.numel()
        return {"tokens": tokens, "positions": positions, "padding": 1 - tokens / positions,
                "rows": self.input_ids.size(0), "segments": int(self.segment.max()) + 1}


PackedPairs = PackedRows  # the name of one row per pair, before several


def attention_tokens(config) -> float | None:
    """The row length at which a row's attention costs as much, per token, as its linear layers: multiply-adds
    per token of the q, k, v, o projections and the (gated) MLP over ``2 * heads * head_dim`` per key (QK and
    AV). None when the config does not say its shape. A dense mask pays attention on every key of the row."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
        inter = int(config.intermediate_size)
    except (AttributeError, TypeError):
        return None
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    experts = int(getattr(config, "num_experts_per_tok", None) or 1)
    linear = hidden * head_dim * 2 * (heads + kv) + 3 * hidden * inter * experts
    return linear / (2 * heads * head_dim)


def _balance(lengths: list[int], k: int) -> tuple[list[list[int]], int]:
    """Segments into ``k`` rows, the longest first into the lightest row, then moves and swaps out of the
    fullest row while they lower it; returns the rows and the longest row's length."""
    rows: list[list[int]] = [[] for _ in range(k)]
    heap = [(0, r) for r in range(k)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, r = heapq.heappop(heap)
        rows[r].append(i)
        heapq.heappush(heap, (load + lengths[i], r))
    loads = [sum(lengths[i] for i in row) for row in rows]
    for _ in range(4 * len(lengths)):  # each step lowers the fullest row without making another as full
        hi = max(range(k), key=loads.__getitem__)
        step = None
        for r in (r for r in range(k) if r != hi):
            gap = loads[hi] - loads[r]
            step = next(((i, None, lengths[i]) for i in rows[hi] if 0 < lengths[i] < gap), None)
            step = step or next(((i, j, lengths[i] - lengths[j]) for i in rows[hi] for j in rows[r]
                                 if 0 < lengths[i] - lengths[j] < gap), None)
            if step:
                break
        if step is None:
            break
        i, j, moved = step
        rows[hi].remove(i)
        rows[r].append(i)
        if j is not None:
            rows[r].remove(j)
            rows[hi].append(j)
        loads[hi] -= moved
        loads[r] += moved
    return [sorted(row) for row in rows if row], max(loads)


def plan_rows(lengths: list[int], max_tokens: int | None, attention_tokens: float | None = None) -> list[list[int]]:
    """Segments (their indices) to rows. ``max_tokens`` None: one segment per row, in order.

    Otherwise rows of at most ``max(max_tokens, longest segment)`` tokens, balanced (``_balance``), and as many
    as cost least under ``rows * L * (1 + L / attention_tokens)``: every position of a row of length ``L`` pays
    the linear layers, and under a dense mask attention over ``L`` keys. Fewer, longer rows pad less but
    attend more; with ``attention_tokens`` None, the fewest rows that fit.
    """
    if max_tokens is None:
        return [[i] for i in range(len(lengths))]
    longest, total = max(lengths), sum(lengths)
    cap = max(max_tokens, longest)

    def cost(k, length):
        return k * length * (1 + length / attention_tokens) if attention_tokens else k

    best = None
    for k in range(math.ceil(total / cap), len(lengths) + 1):
        if best is not None and cost(k, max(longest, total / k)) >= best[0]:
            if total / k <= longest:  # every further row only adds padding
                break
            continue
        rows, length = _balance(lengths, k)
        if length <= cap and (best is None or cost(k, length) < best[0]):
            best = (cost(k, length), rows)
            if not attention_tokens:
                break
    return best[1]


# ---------------------------------------------------------------- from TRL's batches to segments


def _trl_rows(attention_mask, completion_mask):
    """(length, prompt length) of TRL's rows, or None unless each row is prompt, completion, padding."""
    col = torch.arange(attention_mask.size(1), device=attention_mask.device)
    length = attention_mask.sum(1)
    prompt = length - completion_mask.sum(1)
    if not (torch.equal(attention_mask.bool(), col < length[:, None])
            and torch.equal(completion_mask.bool(), (col >= prompt[:, None]) & (col < length[:, None]))):
        return None
    return length, prompt


def _pair_segments(input_ids, length, prompt):
    """One tree segment per pair of TRL's ``[chosen..., rejected...]`` rows (None when a pair's rows have
    different or empty prompts): per segment, padded to the longest, its tokens, positions, branches, scored
    tokens, their TRL rows, and which entries are real."""
    rows, width = input_ids.shape
    b, device = rows // 2, input_ids.device
    p = prompt[:b]
    if rows % 2 or not torch.equal(p, prompt[b:]) or (p < 1).any():
        return None
    in_prompt = torch.arange(width, device=device) < p[:, None]
    if not torch.equal(input_ids[:b][in_prompt], input_ids[b:][in_prompt]):
        return None
    n_chosen = length[:b]  # prompt + chosen
    n_total = n_chosen + 1 + (length[b:] - p)  # + copy of the last prompt token + rejected
    j = torch.arange(int(n_total.max()), device=device)[None, :]
    first, copy = j < n_chosen[:, None], j == n_chosen[:, None]
    second = (j > n_chosen[:, None]) & (j < n_total[:, None])
    p_ = p[:, None]
    chosen_rows, rejected_rows = torch.arange(b, device=device)[:, None], torch.arange(b, rows, device=device)[:, None]
    src_row = torch.where(first, chosen_rows, rejected_rows)
    src_col = torch.where(first, j, torch.where(copy, p_ - 1, p_ + j - n_chosen[:, None] - 1))
    src_col = torch.where(first | copy | second, src_col, 0)
    branch = torch.full_like(src_col, _PAD)
    branch = torch.where(first & (j < p_ - 1), _SHARED, torch.where(first, _CHOSEN, branch))
    branch = torch.where(copy | second, _REJECTED, branch)
    scored = (first & (j >= p_)) | second  # completion tokens; not the prompt, its copy, or padding
    return input_ids[src_row, src_col], src_col, branch, scored, src_row, j < n_total[:, None]


def _row_segments(input_ids, length, completion_mask):
    """Each TRL row its own segment (prompt + completion), as ``_pair_segments`` returns them."""
    n, width = input_ids.shape
    col = torch.arange(width, device=input_ids.device)[None, :].expand(n, width)
    real = col < length[:, None]
    scored = completion_mask.bool() & (col > 0)  # position 0 has nothing before it: TRL never scores it
    branch = torch.where(real, _SHARED, _PAD)
    rows = torch.arange(n, device=input_ids.device)[:, None].expand(n, width)
    return input_ids, col, branch, scored, rows, real


def _arrange(segments, plan: list[list[int]], n_sources: int, width: int, varlen: bool,
             per_segment: bool = False) -> PackedRows:
    """Segments (``_pair_segments``/``_row_segments``) into the rows of ``plan``, each row's tail padded."""
    tokens, position, branch, scored, source, real = segments
    device = tokens.device
    lengths = real.sum(1).tolist()
    row_of, offset = [0] * len(lengths), [0] * len(lengths)
    for r, members in enumerate(plan):
        used = 0
        for s in members:
            row_of[s], offset[s], used = r, used, used + lengths[s]
    length = max(sum(lengths[s] for s in members) for members in plan)
    seg, col = real.nonzero(as_tuple=True)
    where = (torch.tensor(row_of, device=device)[seg], torch.tensor(offset, device=device)[seg] + col)
    segment = torch.arange(len(lengths), device=device)[:, None].expand_as(real)
    shape = (len(plan), length)

    def place(values, fill):
        return torch.full(shape, fill, dtype=values.dtype, device=device).index_put(where, values[real])

    ids = place(tokens, int(tokens[0, 0]))  # padding repeats a real token; it is never seen or scored
    labels = place(tokens.masked_fill(~scored, -100), -100)
    target = place(source.masked_fill(~scored, -1), -1)[:, 1:]
    return PackedRows(input_ids=ids, position_ids=place(position, 0), labels=labels, segment=place(segment, -1),
                      branch=place(branch, _PAD), source=target, n_sources=n_sources, width=width, varlen=varlen,
                      per_segment=per_segment)


def _rows_of(lengths: list[int], layout: Layout) -> list[list[int]]:
    if layout.varlen:
        return [list(range(len(lengths)))]
    plan = plan_rows(lengths, layout.max_tokens if layout.padding_free else None, layout.attention_tokens)
    if layout.segments and len(plan) < len(lengths):  # packing pays: all of it, attention per segment
        return [list(range(len(lengths)))]
    return plan


def _packed(segments, layout: Layout, n_sources: int, width: int) -> PackedRows:
    plan = _rows_of(segments[5].sum(1).tolist(), layout)
    per_segment = layout.segments and len(plan) == 1 and len(plan[0]) > 1
    return _arrange(segments, plan, n_sources, width, layout.varlen, per_segment)


def pack_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
               max_span: int | None = None, layout: Layout = ONE_PAIR_PER_ROW) -> PackedRows | None:
    """TRL's DPO batch (rows ``[chosen..., rejected...]``, right-padded) in ``layout``: tree segments, or
    (``layout.varlen``) each row its own sequence in one row.

    None when the batch does not have that shape: a pair whose two rows differ in their prompt
    (``truncation_mode="keep_end"`` can cut them differently), an empty prompt, or (``max_span``, a sliding
    attention window, masked layouts only) a sequence longer than the window the mask would silently widen.
    """
    rows = _trl_rows(attention_mask, completion_mask)
    if rows is None or input_ids.size(0) % 2:
        return None
    length, prompt = rows
    if not layout.varlen and max_span is not None and int(length.max()) > max_span:
        return None
    pairs = _pair_segments(input_ids, length, prompt)  # also checks the pairs' prompts when not shared
    if pairs is None:
        return None
    tree = layout.share_prompt and not layout.varlen
    segments = pairs if tree else _row_segments(input_ids, length, completion_mask)
    return _packed(segments, layout, input_ids.size(0), input_ids.size(1))


def pack_sequences(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                   max_span: int | None = None, layout: Layout = Layout()) -> PackedRows | None:
    """Plain sequence packing of TRL's right-padded rows (prompt + completion; the unpaired trainer's KTO
    batches): each row its own segment. None when the rows are not that shape or (``max_span``, masked
    layouts) one is longer than the sliding window."""
    rows = _trl_rows(attention_mask, completion_mask)
    if rows is None or (not layout.varlen and max_span is not None and int(rows[0].max()) > max_span):
        return None
    segments = _row_segments(input_ids, rows[0], completion_mask)
    return _packed(segments, layout, input_ids.size(0), input_ids.size(1))


# ---------------------------------------------------------------- SDPA segment by segment


def segment_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA (``sdpa_attention_forward``: its GQA, scaling, dropout), run on each segment of a row
    that carries its segments' description (``PackedRows.model_kwargs``): queries ``(1, heads, N, dim)``, the
    description ``(1, 3, 1, N)`` of segment, position and branch per token. A segment of one sequence is causal;
    a pair's tree gets its own ``(1, 1, n, n)`` mask. Any other call (a mask, or none): SDPA as it is."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    described = (attention_mask is not None and attention_mask.dtype == torch.long and attention_mask.dim() == 4
                 and attention_mask.shape[1:3] == (3, 1))
    if not described:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if query.size(0) != 1:
        raise ValueError(f"a row of segments is one row; got a batch of {query.size(0)}")
    kwargs.pop("is_causal", None)
    # The same description reaches every layer (and a checkpointed layer's recomputation): read it once.
    parts = getattr(attention_mask, "_aot_parts", None)
    if parts is None:
        parts = attention_mask._aot_parts = _segment_parts(attention_mask)
    outputs = [sdpa_attention_forward(module, query[:, :, part], key[:, :, part], value[:, :, part], mask,
                                      is_causal=mask is None, **kwargs)[0] for part, mask in parts]
    return torch.cat(outputs, dim=1), None  # (1, N, heads, dim)


def _segment_parts(description: torch.Tensor) -> list[tuple[slice, torch.Tensor | None]]:
    """Each segment's slice of the row and its mask: None for one sequence (causal), for a pair's tree
    ``(1, 1, n, n)``: a key in the shared prompt or in the query's own branch, and not later."""
    segment, position, branch = description[0, :, 0]
    _, index, sizes = torch.unique_consecutive(segment, return_inverse=True, return_counts=True)
    trees = torch.zeros_like(sizes).index_add_(0, index, (branch != _SHARED).long())  # > 0: a pair's tree
    parts, start = [], 0
    for size, tree in zip(sizes.tolist(), trees.tolist()):
        part = slice(start, start + size)
        start += size
        mask = None
        if tree:
            pos, br = position[part], branch[part]
            mask = (pos[None, :] <= pos[:, None]) & ((br[None, :] == _SHARED) | (br[None, :] == br[:, None]))
            mask = mask[None, None]
        parts.append((part, mask))
    return parts


def use_segment_attention(models) -> None:
    """Registers ``segment_sdpa`` in transformers as ``SEGMENTS`` (its masks: SDPA's) and sets it on these SDPA
    models (None skipped), so a row of segments runs per segment, also when gradient checkpointing recomputes
    a layer; every other call is transformers' SDPA, unchanged. The saved config does not keep it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SEGMENTS, segment_sdpa)
    AttentionMaskInterface.register(SEGMENTS, sdpa_mask)
    for model in (m for m in models if m is not None):
        if model_attention(model) == "sdpa":
            model.config._attn_implementation = SEGMENTS


# ---------------------------------------------------------------- which layout a model takes


def unsupported_reason(model, padding_free: bool = False) -> str | None:
    """Why this model cannot take packed batches (None: it can). ``model``: the (PEFT-wrapped) model;
    ``padding_free``: whether flash-attention's varlen layout is an option."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if config.model_type not in MODEL_TYPES:
        return f"model type {config.model_type!r} is not among the checked ones {list(MODEL_TYPES)}"
    attention = model_attention(model)
    kind = attention_kind(attention)
    if kind is None or (kind == "varlen" and not padding_free):
        takes = [*ATTENTIONS, FLEX] + (["flash-attention (varlen)"] if padding_free else [])
        return (f"attention {attention!r} does not take a custom 4-D mask (use one of {takes}"
                + ("" if padding_free else "; flash-attention runs padding-free with aot_padding_free") + ")")
    if any(getattr(c, "is_prompt_learning", False) for c in getattr(model, "peft_config", {}).values()):
        return "prompt-learning PEFT prepends virtual tokens to every row"
    return None


def layout_for(models, *, padding_free: bool, share_prompt: bool = True,
               max_tokens: int = MAX_ROW_TOKENS) -> tuple[Layout | None, str | None]:
    """The layout the policy and reference (``models``; None entries skipped) both take, or (None, why not).
    Flash-attention: one varlen row (no tree, no mask); eager/SDPA/flex: masked rows, several segments per row
    with ``padding_free``, the tree with ``share_prompt``; SDPA (policy and reference) with ``padding_free``: one
    row of segments where packing pays (``segments``; the caller sets ``use_segment_attention``)."""
    models = [m for m in models if m is not None]
    for model in models:
        reason = unsupported_reason(model, padding_free)
        if reason:
            return None, reason
    kinds = {attention_kind(model_attention(m)) for m in models}
    if "varlen" in kinds:
        if len(kinds) > 1:
            return None, (f"the models' attentions {sorted(model_attention(m) for m in models)} mix flash-attention "
                          "(sequences from position ids, one row) with masked rows")
        return Layout(padding_free=True, share_prompt=False, varlen=True), None
    sdpa = all(model_attention(m) in ("sdpa", SEGMENTS) for m in models)
    return Layout(padding_free=padding_free, share_prompt=share_prompt, max_tokens=max_tokens,
                  attention_tokens=attention_tokens(models[0].config), segments=padding_free and sdpa), None


def completion_logps(model, backbone, labels: torch.Tensor, **inputs):
    """Per-token log-probs ``(B, L - 1)`` of the next-token ``labels`` (-100: not scored, 0 there), and the output.

    ``model`` is what the trainer calls (DDP/PEFT-wrapped), ``backbone`` the module TRL's fused LM head runs
    first (``base_model`` of the causal LM that ``add_fused_lm_head`` patched). A forward hook on it keeps the
    hidden states of the scored positions only, as one row, and TRL's head scores them with the labels
    pre-shifted (``shift_labels``), with all its handling of temperature, logit scaling, soft-capping and
    autocast. The other positions' logits are never computed.
    """
    scored = labels[:, 1:] != -100
    length = labels.size(1)

    def keep_scored(module, args, output):  # the last `length` positions: prompt-learning PEFT prepends tokens
        output.last_hidden_state = output.last_hidden_state[:, -length:][:, :-1][scored][None]
        return output

    handle = backbone.register_forward_hook(keep_scored)
    try:
        outputs = model(**inputs, shift_labels=labels[:, 1:][scored][None], use_cache=False, fused_lm_head=True)
    finally:
        handle.remove()
    outputs.log_probs = outputs.log_probs.new_zeros(scored.shape).masked_scatter(scored, outputs.log_probs[0])
    return outputs.log_probs, outputs
