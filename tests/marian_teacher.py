"""Tiny random-weight MarianMT models with their tokenizers in OPUS-MT's layout, built offline: sentencepiece
with unk 0, <s> 1, </s> 2, and a vocab.json of the pieces of both models in other ids: </s> 0, <unk> 1, ...,
<pad> last (tests/test_vocab_from.py, tests/test_recipe.py; tests/test_pretrained.py trains one)."""

import json
from collections import Counter
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch


def train_spm(path, lines: list[str], size: int, model_type: str = "unigram") -> None:
    with open(path, "wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=f,
            vocab_size=size,
            model_type=model_type,
            minloglevel=2,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
        )


def marian(
    root: Path,
    src: list[str],
    tgt: list[str],
    joint: bool,
    sizes: tuple[int, int] = (40, 36),
    positions: int = 64,
    spm_type: str = "unigram",
    **config: Any,
) -> Path:
    """A random MarianMT model with its tokenizer in OPUS-MT's layout, in root/hf, its sentencepiece models
    (of `spm_type`) trained on `src` and `tgt` (`sizes` pieces); with `joint`, one sentencepiece model for
    both sides (of sizes[0] pieces), else one each, and vocab.json the union of their pieces less a frequent
    target piece (which the teacher's tokenizer makes <unk>). `config`: MarianConfig's settings to change."""
    import transformers

    train_spm(root / "source.spm", src + tgt if joint else src, sizes[0], spm_type)
    if joint:
        (root / "target.spm").write_bytes((root / "source.spm").read_bytes())
    else:
        train_spm(root / "target.spm", tgt, sizes[1], spm_type)
    vocab = {"</s>": 0, "<unk>": 1}  # OPUS-MT's ids, not the spm models' (and no <s>)
    for name in ("source.spm", "target.spm"):
        sp = spm.SentencePieceProcessor(model_file=str(root / name))
        for i in range(sp.get_piece_size()):
            if not sp.is_control(i):
                vocab.setdefault(sp.id_to_piece(i), len(vocab))
    if not joint:  # a target piece that vocab.json lacks: the teacher's tokenizer makes it <unk>
        counts = Counter(p for ids in sp.encode(tgt, out_type=str) for p in ids if len(p) > 2)
        del vocab[counts.most_common(1)[0][0]]
        vocab = {p: i for i, p in enumerate(vocab)}
    vocab["<pad>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = transformers.MarianTokenizer(
        str(root / "source.spm"), str(root / "target.spm"), str(root / "vocab.json")
    )
    settings = {
        "d_model": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 32,
        "decoder_ffn_dim": 32,
        "init_std": 0.5,  # distributions far from uniform: top-k without near ties
    }
    torch.manual_seed(0)
    out = root / "hf"
    transformers.MarianMTModel(
        transformers.MarianConfig(
            **settings | config,
            vocab_size=len(vocab),
            max_position_embeddings=positions,
            pad_token_id=vocab["<pad>"],
            eos_token_id=vocab["</s>"],
            decoder_start_token_id=vocab["<pad>"],
        )
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
