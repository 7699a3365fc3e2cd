"""Word-level timestamps for Whisper-style decoding: a port of openai-whisper's `timing.py`.

The decoder's cross-attention, in its alignment heads, looks at the audio frames a token was said
in. For one window and its decoded text tokens, `find_alignment` reads those attention scores in
one teacher-forced pass (`MultimodalTransformer.cross_attention_scores`), normalises them per
frame, smooths them along time (a median filter) and aligns tokens to frames by dynamic time
warping; a word starts at the frame where its first token's path steps in. `add_word_timestamps`
then joins punctuation to its word, cuts over-long words at sentence ends and pauses as
openai-whisper does, and gives each segment its words: {"word", "start", "end", "probability"},
times in seconds in the recording.

The alignment heads: openai-whisper's default, every head of the decoder's second half, unless a
list of (layer, head) is given (its released models name theirs in `whisper._ALIGNMENT_HEADS`,
Hugging Face's in `generation_config.json`). Left out: openai-whisper's CUDA kernels (Triton DTW
and median filter; the dynamic programme here is vectorised over anti-diagonals with numpy); its
hallucination-silence skipping, which moves the window seek, is `recipes.whisper_seek`'s.
"""

from __future__ import annotations

import string

import numpy as np
import torch
import torch.nn.functional as F

from tokenizers_mm.audio import HOP_LENGTH, SAMPLE_RATE
from tokenizers_mm import TokenSet, collate

TOKENS_PER_SECOND = SAMPLE_RATE // (2 * HOP_LENGTH)  # 50 encoder frames per second (the encoder halves the 10 ms frames)
UNICODE_SPLIT = {"zh", "ja", "th", "lo", "my", "yue"}  # languages written without spaces: words are characters
PREPEND = "\"'“¿([{-"  # openai-whisper's punctuation joined to the word after it
APPEND = "\"'.。,，!！?？:：”)]}、"  # ... and to the word before it
SENTENCE_END = ".。!！?？"


def median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """A median filter of odd `width` along the last dimension (reflect padding), as openai-whisper's."""
    if width <= 0 or width % 2 == 0:
        raise ValueError(f"median filter width {width}: expected an odd number")
    pad = width // 2
    if x.shape[-1] <= pad:  # F.pad's reflect padding needs more values than the padding
        return x
    ndim = x.ndim
    if ndim <= 2:  # reflect padding wants 3-d or 4-d input
        x = x[None, None, :]
    x = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    out = x.unfold(-1, width, 1).sort()[0][..., pad]  # sort() is faster than torch.median
    return out[0, 0] if ndim <= 2 else out


def dtw(cost_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through an (N, M) cost matrix: (rows, columns) of its steps, each
    a diagonal, down or right move. openai-whisper's `dtw_cpu` as numba compiles it (float64 costs:
    numba types its `np.ones(..., float32) * np.inf` as float64, where numpy would keep float32; same
    tie-breaking: diagonal, then down, then right), computed one anti-diagonal at a time (every cell
    of one depends only on the two before it) instead of a compiled double loop."""
    x = np.asarray(cost_matrix, dtype=np.float64)
    N, M = x.shape
    cost = np.full((N + 1, M + 1), np.inf)
    trace = np.full((N + 1, M + 1), -1, dtype=np.int8)
    cost[0, 0] = 0
    for d in range(2, N + M + 1):  # cells (i, j) with i + j = d, i in 1..N, j in 1..M
        i = np.arange(max(1, d - M), min(N, d - 1) + 1)
        j = d - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]  # diagonal, down, right
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        c = np.choose(t, [c0, c1, c2])
        cost[i, j] = x[i - 1, j - 1] + c
        trace[i, j] = t
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = N, M, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    path = np.array(path[::-1]).reshape(-1, 2)
    return path[:, 0], path[:, 1]


def split_on_unicode(text_tok, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
    """Tokens grouped so that each group decodes to whole characters (a character's UTF-8 bytes may
    span tokens): (texts, token groups), openai-whisper's `split_tokens_on_unicode`."""
    full, replacement = text_tok.decode(tokens), "\ufffd"
    words, groups, current, offset = [], [], [], 0
    for token in tokens:
        current.append(token)
        decoded = text_tok.decode(current)
        if replacement not in decoded or full[offset + decoded.index(replacement)] == replacement:
            words.append(decoded)
            groups.append(current)
            current, offset = [], offset + len(decoded)
    return words, groups


def split_to_word_tokens(text_tok, tokens: list[int], language: str | None) -> tuple[list[str], list[list[int]]]:
    """Tokens grouped into words: characters for languages written without spaces, otherwise a new
    word at each space, punctuation mark or special token (openai-whisper's `split_to_word_tokens`)."""
    pieces, groups = split_on_unicode(text_tok, tokens)
    if language in UNICODE_SPLIT:
        return pieces, groups
    eot = text_tok.special_ids["<|endoftext|>"]
    words, word_tokens = [], []
    for piece, group in zip(pieces, groups):
        if group[0] >= eot or piece.startswith(" ") or piece.strip() in string.punctuation or not words:
            words.append(piece)
            word_tokens.append(list(group))
        else:
            words[-1] += piece
            word_tokens[-1].extend(group)
    return words, word_tokens


def default_alignment_heads(model) -> list[tuple[int, int]]:
    """openai-whisper's default: every head of the decoder's second half of layers."""
    depth, heads = len(model.decoder.blocks), model.config.trunk.num_heads
    return [(layer, h) for layer in range(depth // 2, depth) for h in range(heads)]


def alignment_heads(spec, model) -> list[tuple[int, int]] | None:
    """The (decoder layer, head) pairs to align with, checked against the model: None (openai-
    whisper's default, `default_alignment_heads`), a list of pairs, "layer:head,layer:head ...", or
    the name of a released Whisper model ("tiny", "base.en", "large-v3", ...) whose heads openai-
    whisper lists (`whisper._ALIGNMENT_HEADS`; openai-whisper installed), for runs on its weights."""
    if spec is None:
        return None
    depth, heads = len(model.decoder.blocks), model.config.trunk.num_heads
    if isinstance(spec, str) and ":" not in spec:
        try:
            from whisper import _ALIGNMENT_HEADS
        except ImportError:
            raise ValueError(f"alignment heads {spec!r}: released models' heads come from openai-whisper (pip install openai-whisper); "
                             "or give them as layer:head,layer:head") from None  # fmt: skip
        if spec not in _ALIGNMENT_HEADS:
            raise ValueError(f"alignment heads {spec!r}: not a released Whisper model ({', '.join(_ALIGNMENT_HEADS)})")
        import base64
        import gzip

        mask = np.frombuffer(gzip.decompress(base64.b85decode(_ALIGNMENT_HEADS[spec])), dtype=bool)  # (layers × heads) as openai-whisper stores it
        if mask.size != depth * heads:
            raise ValueError(f"alignment heads {spec!r}: that model has {mask.size} decoder heads in all, this one {depth} layers × {heads} heads")
        return [(int(i) // heads, int(i) % heads) for i in np.flatnonzero(mask)]
    if isinstance(spec, str):
        try:
            spec = [tuple(int(x) for x in pair.split(":")) for pair in spec.replace(" ", "").split(",") if pair]
        except ValueError:
            raise ValueError(f"alignment heads {spec!r}: expected layer:head pairs such as 2:0,3:1") from None
    pairs = [tuple(p) for p in spec]
    bad = [p for p in pairs if len(p) != 2 or not (0 <= p[0] < depth and 0 <= p[1] < heads)]
    if bad or not pairs:
        raise ValueError(f"alignment heads {bad[0] if bad else 'none'}: expected (layer, head) pairs within this decoder's {depth} layers × {heads} heads")
    return pairs


@torch.no_grad()
def find_alignment(model, text_tok, memory, sot_sequence: list[int], tokens: list[int], num_frames: int, language: str | None = None,
                   heads: list[tuple[int, int]] | None = None, medfilt_width: int = 7, qk_scale: float = 1.0) -> list[dict]:  # fmt: skip
    """Each word of a window's text tokens (no timestamps, no <|endoftext|>) with its start and end in
    seconds from the window's start and its mean token probability: [{"word", "tokens", "start",
    "end", "probability"}], openai-whisper's `find_alignment`. memory: the window's encoder Memory
    (one row); sot_sequence: <|startoftranscript|> with its language and task tokens; num_frames: the
    window's 10 ms frames of sound (the padding after them is not aligned to); under 2 (one encoder
    position) there is nothing to align to: no words (openai-whisper's DTW would place them at -20 ms)."""
    if not tokens or num_frames // 2 == 0:
        return []
    special = text_tok.special_ids
    eot = special["<|endoftext|>"]
    ids = [*sot_sequence, special["<|notimestamps|>"], *tokens, eot]
    heads = default_alignment_heads(model) if heads is None else heads
    batch = collate([TokenSet("text", ids=torch.tensor(ids))]).to(memory.states.device)
    out, scores = model.cross_attention_scores({"text": batch}, memory=memory, layers=sorted({layer for layer, _ in heads}))
    logits = next(iter(out.logits.values()))[0, len(sot_sequence) :, :eot].float()  # from <|notimestamps|>: each predicts the next token
    probs = logits.softmax(-1)[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()
    weights = torch.stack([scores[layer][0, h] for layer, h in heads])  # (heads, tokens, frames)
    weights = (weights[:, :, : num_frames // 2] * qk_scale).softmax(-1)  # over the frames with sound
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std, medfilt_width)
    matrix = weights.mean(0)[len(sot_sequence) : -1]  # (1 + text tokens, frames): <|notimestamps|> and the text
    text_indices, time_indices = dtw(-matrix.double().cpu().numpy())
    words, word_tokens = split_to_word_tokens(text_tok, tokens + [eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND  # when the path first reaches each token
    return [{"word": w, "tokens": t, "start": float(jump_times[a]), "end": float(jump_times[b]), "probability": float(np.mean(probs[a:b]))}
            for w, t, a, b in zip(words, word_tokens, boundaries[:-1], boundaries[1:])]  # fmt: skip


def merge_punctuations(alignment: list[dict], prepended: str = PREPEND, appended: str = APPEND) -> None:
    """Join opening punctuation to the word after it and closing punctuation to the word before it,
    in place (the emptied entries keep no word and no tokens), as openai-whisper does."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous["word"].startswith(" ") and previous["word"].strip() in prepended:
            following["word"], following["tokens"] = previous["word"] + following["word"], previous["tokens"] + following["tokens"]
            previous["word"], previous["tokens"] = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous["word"].endswith(" ") and following["word"] in appended:
            previous["word"], previous["tokens"] = previous["word"] + following["word"], previous["tokens"] + following["tokens"]
            following["word"], following["tokens"] = "", []
        else:
            i = j
        j += 1


def get_end(segments: list[dict], default: float) -> float:
    """Where a window's speech ends (openai-whisper's `whisper.utils.get_end`): its last word's end,
    else its last segment's end, else `default`."""
    return next((w["end"] for s in reversed(segments) for w in reversed(s["words"])), segments[-1]["end"] if segments else default)


def add_word_timestamps(segments: list[dict], alignment: list[dict], eot: int, time_offset: float, last_speech_timestamp: float,
                        prepended: str = PREPEND, appended: str = APPEND) -> float:  # fmt: skip
    """Give each of a window's segments ({"start", "end", "tokens"}, times in the recording; tokens from
    `eot` on, timestamps among them, are not text) its
    "words", from the window's `find_alignment` (times from `time_offset`, the window's start), and
    move the segment's start and end to its words' where they disagree by less than openai-whisper
    allows; returns the time the window's last word ends, or without words its last segment's end
    (`last_speech_timestamp` without segments): the next window's `last_speech_timestamp`, the end
    of the speech before it, as openai-whisper's transcribe reads it (`whisper.utils.get_end`).
    openai-whisper's `add_word_timestamps`: words longer than twice the median word (at most 0.7 s)
    are cut at sentence ends and after pauses; punctuation in `prepended` / `appended` joins the
    word after / before it (`merge_punctuations`)."""
    durations = np.array([w["end"] - w["start"] for w in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations)) if len(durations) > 0 else 0.0)
    longest = median * 2
    if len(durations) > 0:  # words at sentence ends no longer than twice the median word
        for i in range(1, len(alignment)):
            if alignment[i]["end"] - alignment[i]["start"] > longest:
                if alignment[i]["word"] in SENTENCE_END:
                    alignment[i]["end"] = alignment[i]["start"] + longest
                elif alignment[i - 1]["word"] in SENTENCE_END:
                    alignment[i]["start"] = alignment[i]["end"] - longest
    merge_punctuations(alignment, prepended, appended)
    index = 0
    for segment in segments:
        text_tokens = [t for t in segment["tokens"] if t < eot]
        saved, words = 0, []
        while index < len(alignment) and saved < len(text_tokens):
            timing = alignment[index]
            if timing["word"]:
                words.append({"word": timing["word"], "start": round(time_offset + timing["start"], 2),
                              "end": round(time_offset + timing["end"], 2), "probability": timing["probability"]})  # fmt: skip
            saved += len(timing["tokens"])
            index += 1
        if words:
            # the first and second word after a pause no longer than twice the median word
            if words[0]["end"] - last_speech_timestamp > median * 4 and (
                    words[0]["end"] - words[0]["start"] > longest or (len(words) > 1 and words[1]["end"] - words[0]["start"] > longest * 2)):  # fmt: skip
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > longest:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - longest)
                    words[0]["end"] = words[1]["start"] = boundary
                words[0]["start"] = max(0, words[0]["end"] - longest)
            # the segment's own start / end where its first / last word is too long
            if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
                words[0]["start"] = max(0, min(words[0]["end"] - median, segment["start"]))
            else:
                segment["start"] = words[0]["start"]
            if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median, segment["end"])
            else:
                segment["end"] = words[-1]["end"]
            last_speech_timestamp = segment["end"]
        segment["words"] = words
    return get_end(segments, last_speech_timestamp)
