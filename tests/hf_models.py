"""Tiny random-weight Hugging Face translation models with their tokenizers in the hub's layouts, built offline
from the toy task's letters: MarianMT in OPUS-MT's (sentencepiece with unk 0, <s> 1, </s> 2, and a vocab.json of
the pieces of both models in other ids: </s> 0, <unk> 1, ..., <pad> last), NLLB's, MBart-50's and T5's
(tests/test_vocab_from.py, tests/test_recipe.py, tests/test_pretrained_languages.py; tests/test_pretrained.py
trains a MarianMT and an M2M100 one)."""

import json
from collections import Counter
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from test_cli import kdmt, write
from toy import LETTERS

from kdmt.files import read_lines

# the BART-like models' sizes; weights far from uniform (distributions without near ties, between engines too)
TINY = {
    "d_model": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "init_std": 0.5,
}


def train_spm(path, lines: list[str], size: int, model_type: str = "unigram", ids: dict | None = None) -> None:
    """A sentencepiece model of `lines` in `path`, with these special ids (default unk 0, <s> 1, </s> 2, no pad)."""
    ids = ids or {"unk": 0, "bos": 1, "eos": 2}
    with open(path, "wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=f,
            vocab_size=size,
            model_type=model_type,
            minloglevel=2,
            **{f"{name}_id": ids.get(name, -1) for name in ("pad", "unk", "bos", "eos")},
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
    torch.manual_seed(0)
    out = root / "hf"
    transformers.MarianMTModel(
        transformers.MarianConfig(
            **TINY | config,
            vocab_size=len(vocab),
            max_position_embeddings=positions,
            pad_token_id=vocab["<pad>"],
            eos_token_id=vocab["</s>"],
            decoder_start_token_id=vocab["<pad>"],
        )
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def word_pieces(*extra: str) -> list[tuple[str, float]]:
    """A unigram vocabulary of the toy task: each word (▁a) one piece, `extra` pieces, then the letters alone."""
    return [("▁" + c, -1.0) for c in (*LETTERS, *extra)] + [("▁", -2.0)] + [(c, -3.0) for c in LETTERS]


def save(model_class, config, tokenizer, out: Path, n_pieces: int) -> Path:
    """A random model of `config` saved with its tokenizer in `out`. The rows of the tokens after the first
    `n_pieces` (the language codes) are scaled down: a random model would emit them (decoded as nothing)."""
    torch.manual_seed(0)
    model = model_class(config)
    with torch.no_grad():
        model.get_input_embeddings().weight[n_pieces:] *= 0.1
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


BART = TINY | {  # fairseq's special ids; the decoder starts with </s>
    "max_position_embeddings": 64,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
}


def nllb(out: Path) -> Path:
    """NLLB's layout: an M2M100 model with an NllbTokenizer (BPE: fairseq's specials, the pieces, then the
    language codes as special tokens); the decoder starts with </s>, the target language's token forced."""
    import transformers

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "▁": 4}
    vocab |= {c: len(vocab) + i for i, c in enumerate(LETTERS)}
    vocab |= {"▁" + c: len(vocab) + i for i, c in enumerate(LETTERS)}
    tokenizer = transformers.NllbTokenizer(vocab=vocab, merges=[("▁", c) for c in LETTERS])
    config = transformers.M2M100Config(vocab_size=len(tokenizer), tokenizer_class="NllbTokenizer", **BART)
    return save(transformers.M2M100ForConditionalGeneration, config, tokenizer, out, len(vocab))


def mbart50(out: Path) -> Path:
    """MBart-50's layout: an MBart50Tokenizer (unigram: fairseq's specials, the pieces, the language codes,
    <mask>) and its hub config's fields (normalize_before, the tokenizer class that makes CTranslate2 start
    the decoder with </s>)."""
    import transformers

    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), *word_pieces()]  # sentencepiece's order
    tokenizer = transformers.MBart50Tokenizer(vocab=pieces, bos_token="<s>")
    config = transformers.MBartConfig(
        vocab_size=len(tokenizer),
        tokenizer_class="MBart50Tokenizer",
        normalize_before=True,
        normalize_embedding=True,
        **BART,
    )
    return save(transformers.MBartForConditionalGeneration, config, tokenizer, out, len(pieces) + 1)


def t5(out: Path) -> Path:
    """A T5 model whose tokenizer knows the task prefix "translate:" as one piece."""
    import transformers

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *word_pieces("translate:")]
    tokenizer = transformers.T5Tokenizer(vocab=pieces, extra_ids=0)
    config = transformers.T5Config(
        vocab_size=len(tokenizer),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        initializer_factor=5.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return save(transformers.T5ForConditionalGeneration, config, tokenizer, out, len(pieces))


def distilled(teacher: Path, sources: list[str], tmp_path: Path, name: str, *args) -> list[str]:
    """`kdmt distill` of `sources` by `teacher` (unfiltered): the distilled lines."""
    src = write(tmp_path / "train.src", sources)
    out = tmp_path / f"{name}.tgt"
    result = kdmt("distill", "-t", teacher, "--src", src, "-o", out, "--no-filter", *args)
    assert result.exit_code == 0, result.stderr
    return read_lines(out)
