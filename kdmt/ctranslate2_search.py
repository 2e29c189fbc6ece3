"""CTranslate2's search under kdmt's search options: one decoding loop for every CTranslate2 engine (kdmt's
own exports in kdmt.engines, converted Hugging Face models and directories made elsewhere in
kdmt.pretrained). The engines differ only in how ids become CTranslate2's tokens and back, the target
prefix (a target language's token) and the sequences never generated; `translate_groups` takes those."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdmt.errors import KdmtError
from kdmt.export import require
from kdmt.search import Hypothesis
from kdmt.translate import Progress, TextTranslator


def load_ctranslate2(
    directory: Path, device: str = "cpu", device_index: int = 0, inter_threads: int = 1, intra_threads: int = 1
) -> Any:
    """A ctranslate2.Translator of `directory`; one that CTranslate2 cannot load is one line (KdmtError)."""
    try:
        return require("ctranslate2").Translator(
            str(directory),
            device=device,
            device_index=device_index,
            inter_threads=inter_threads,
            intra_threads=intra_threads,
        )
    except (RuntimeError, ValueError) as e:
        raise KdmtError(f"{directory}: CTranslate2 cannot load it ({str(e).splitlines()[0][:200]})") from None


def translate_groups(
    engine: TextTranslator,
    translator: Any,
    src: list[list[int]],
    to_tokens: Callable[[list[int]], list[str]],
    to_ids: Callable[[list[str]], list[int]],
    search: dict[str, Any],
    nbest: int = 1,
    progress: Progress | None = None,
    target_prefix: list[str] | None = None,
    suppress: list[list[str]] | None = None,
) -> list[list[Hypothesis]]:
    """The `nbest` hypotheses of each source (ids) by `translator` (a ctranslate2.Translator) under the
    engine's options: its batches that share a length limit (TextTranslator.limit_groups), each sentence's
    limit and --min-len, the length penalty and `search` (beam_size, or the sampling arguments). All
    batches are queued at once, so that CTranslate2 decodes as many in parallel as it has workers.

    `to_tokens` gives the tokens CTranslate2 reads for a source's ids (without the EOS the model appends
    itself), `to_ids` a hypothesis's ids; `target_prefix` is forced first (not counted in the limits, and
    not in the hypotheses); `suppress` lists the sequences never generated."""
    o, prefix = engine.options, target_prefix or []
    pending = []
    for group in engine.limit_groups(src):
        limit = engine.max_output_length(len(src[group[0]]))
        results = translator.translate_batch(
            [to_tokens(src[i]) for i in group],
            target_prefix=[prefix] * len(group) if prefix else None,
            **search,
            num_hypotheses=nbest,
            length_penalty=o.lenpen,
            max_decoding_length=len(prefix) + limit,
            min_decoding_length=len(prefix) + min(o.min_len, limit),
            max_input_length=0,
            return_scores=True,
            suppress_sequences=suppress,
            asynchronous=True,
        )
        pending.append((group, results))
    out: list[list[Hypothesis]] = [[] for _ in src]
    for group, results in pending:
        for i, result in zip(group, results):
            result = result.result()
            out[i] = [
                Hypothesis(to_ids(tokens[len(prefix) :]), score)
                for tokens, score in zip(result.hypotheses, result.scores)
            ]
        if progress:
            progress(len(group))
    return out
