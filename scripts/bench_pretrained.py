"""A Hugging Face teacher's speed through kdmt's two engines for it: generate() and CTranslate2 (float32, int8).

A MarianMT model of the demo teacher's size (kdmt's --preset small: d_model 256, 3+3 layers, d_ff 1024)
with an OPUS-MT-style tokenizer (one sentencepiece model trained here on the corpus, </s> 0, <unk> 1,
<pad> last) translates the first --lines sentences of a corpus through `kdmt.engines.open_translator`
(`--engine transformers`, and `--engine ctranslate2` float32 and int8: converted once, cached), each
--repeats times in turn after an untimed run (bench_engines.timed); lines/s from the median. The weights
are random: every hypothesis runs to the length limit (a·|source| + b), so this measures decoding speed,
not quality. Example (2 CPU threads, beam 5):

    python scripts/bench_pretrained.py --src data/multi30k/train.de.gz --lines 200 --threads 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
import transformers
from bench_engines import timed

from kdmt.engines import open_translator
from kdmt.files import read_lines
from kdmt.model import PRESETS
from kdmt.pretrained import PretrainedOptions
from kdmt.translate import SearchOptions


def marian_teacher(directory: Path, corpus: list[str], vocab_size: int, preset: str = "small") -> Path:
    """A random MarianMT model of kdmt's `preset` size, with its tokenizer, saved in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=vocab_size,
        eos_id=0,
        unk_id=1,
        bos_id=-1,
        pad_id=-1,
        minloglevel=2,
    )
    (directory / "spm.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())} | {"<pad>": sp.get_piece_size()}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    spm_path = str(directory / "spm.model")
    tokenizer = transformers.MarianTokenizer(spm_path, spm_path, str(directory / "vocab.json"))
    p = PRESETS[preset]
    pad = vocab["<pad>"]
    config = transformers.MarianConfig(
        vocab_size=len(vocab),
        d_model=p["d_model"],
        encoder_layers=p["enc_layers"],
        decoder_layers=p["dec_layers"],
        encoder_attention_heads=p["n_heads"],
        decoder_attention_heads=p["n_heads"],
        encoder_ffn_dim=p["d_ff"],
        decoder_ffn_dim=p["d_ff"],
        max_position_embeddings=512,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
    )
    torch.manual_seed(0)
    hf = transformers.MarianMTModel(config).eval()
    with torch.no_grad():
        hf.get_input_embeddings().weight[pad] = 0  # OPUS-MT's layout: the decoder starts from zeros
    out = directory / "hf"
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=Path("data/multi30k/train.de.gz"))
    parser.add_argument("--lines", type=int, default=2000, help="sentences translated (the corpus's first)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    corpus = read_lines(args.src)
    lines = corpus[: args.lines]
    options = SearchOptions(beam=args.beam)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KDMT_CACHE"] = str(Path(tmp) / "cache")
        teacher = marian_teacher(Path(tmp) / "marian", corpus[:20000], args.vocab_size)
        engines = {
            "transformers generate()": ("transformers", "float32"),
            "ctranslate2 float32": ("ctranslate2", "float32"),
            "ctranslate2 int8": ("ctranslate2", "int8"),
        }
        translators = {}
        for name, (engine, quantization) in engines.items():
            pretrained = PretrainedOptions(quantization=quantization)
            _, translators[name] = open_translator([teacher], "cpu", options, True, args.threads, engine, pretrained)
        parameters = translators["transformers generate()"].num_parameters()
        seconds, _ = timed({name: (lambda t=t: t.translate(lines)) for name, t in translators.items()}, args.repeats)
    results = {name: round(len(lines) / s, 2) for name, s in seconds.items()}
    print(
        f"MarianMT, random weights, {parameters:,} parameters; {len(lines)} sentences of {args.src}; "
        f"beam {args.beam}; {args.threads} CPU threads; median of {args.repeats}"
    )
    base = results["transformers generate()"]
    for name, rate in results.items():
        print(f"{name:26s} {rate:8.2f} lines/s  ×{rate / base:.2f}")
    if args.json:
        record = {"lines": len(lines), "beam": args.beam, "threads": args.threads, "parameters": parameters}
        args.json.write_text(json.dumps({**record, "lines_per_s": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
