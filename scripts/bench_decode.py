"""Beam-search speed: kdmt against Hugging Face transformers `generate()`, same model, same batches.

The kdmt checkpoint's weights are copied into a transformers M2M100 model, the architecture that
matches kdmt's (pre-norm, sinusoidal positions, scaled and tied embeddings, ReLU), so both decode the
same network. Both get the same batches of sentences sorted by length, beam 5, length penalty 1,
fairseq's stopping rule (early_stopping=True), PAD and BOS never generated; the table reports the
sentences/s of each, the ratio, and how many tokens each generated (and how often the outputs agree).
Where ctranslate2 is installed, the same weights also run there as a third column. Every system runs
`--repeats` times, alternating; the median is reported. Example:

    python scripts/bench_decode.py -m work/demo/teacher/checkpoint_best.pt \\
        --src data/multi30k/test_2016_flickr.de.gz --sentences 500 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdmt.batching import pad
from kdmt.checkpoint import load_checkpoint
from kdmt.device import describe_device
from kdmt.files import read_lines
from kdmt.model import Transformer
from kdmt.search import Ensemble, beam_search
from kdmt.vocab import BOS, EOS, PAD, Vocab


def to_hf(model: Transformer):
    """A transformers M2M100ForConditionalGeneration holding the same weights as a kdmt model."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    c = model.config
    config = M2M100Config(
        vocab_size=c.tgt_vocab_size,
        d_model=c.d_model,
        encoder_layers=c.enc_layers,
        decoder_layers=c.dec_layers,
        encoder_attention_heads=c.n_heads,
        decoder_attention_heads=c.n_heads,
        encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff,
        activation_function="relu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        scale_embedding=True,
        max_position_embeddings=c.max_positions,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
        forced_bos_token_id=None,
        tie_word_embeddings=True,
    )
    hf = M2M100ForConditionalGeneration(config).eval()
    sd = model.state_dict()
    new = {"model.shared.weight": sd["tgt_embed.weight"], "lm_head.weight": sd["tgt_embed.weight"]}

    def linear(dst: str, src: str) -> None:
        new[f"{dst}.weight"], new[f"{dst}.bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def attention(dst: str, src: str) -> None:
        for a, b in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "out")):
            linear(f"{dst}.{a}", f"{src}.{b}")

    for i in range(c.enc_layers):
        d, s = f"model.encoder.layers.{i}", f"encoder.{i}"
        attention(f"{d}.self_attn", f"{s}.attn")
        linear(f"{d}.self_attn_layer_norm", f"{s}.norm1")
        linear(f"{d}.final_layer_norm", f"{s}.norm2")
        linear(f"{d}.fc1", f"{s}.ff.0")
        linear(f"{d}.fc2", f"{s}.ff.3")
    for i in range(c.dec_layers):
        d, s = f"model.decoder.layers.{i}", f"decoder.{i}"
        attention(f"{d}.self_attn", f"{s}.self_attn")
        attention(f"{d}.encoder_attn", f"{s}.cross_attn")
        linear(f"{d}.self_attn_layer_norm", f"{s}.norm1")
        linear(f"{d}.encoder_attn_layer_norm", f"{s}.norm2")
        linear(f"{d}.final_layer_norm", f"{s}.norm3")
        linear(f"{d}.fc1", f"{s}.ff.0")
        linear(f"{d}.fc2", f"{s}.ff.3")
    linear("model.encoder.layer_norm", "enc_norm")
    linear("model.decoder.layer_norm", "dec_norm")
    missing, unexpected = hf.load_state_dict(new, strict=False)
    assert not unexpected and all("embed_tokens" in k for k in missing), (missing, unexpected)
    for part in (hf.model.encoder, hf.model.decoder):  # kdmt's position p is M2M100's row PAD + 1 + p
        table = part.embed_positions.weights
        table[PAD + 1 : PAD + 1 + c.max_positions] = model.positions.to(table.dtype)
    return hf


def to_ctranslate2(model: Transformer, vocab: Vocab, directory: Path):
    """A CTranslate2 model directory holding the same weights as a kdmt model (joint vocabulary)."""
    import ctranslate2
    from ctranslate2.converters.utils import fuse_linear
    from ctranslate2.specs import common_spec, transformer_spec

    c, sd = model.config, {k: v.float().numpy() for k, v in model.state_dict().items()}
    spec = transformer_spec.TransformerSpec.from_config((c.enc_layers, c.dec_layers), c.n_heads, pre_norm=True)

    def linear(dst, name: str) -> None:
        dst.weight, dst.bias = sd[f"{name}.weight"], sd[f"{name}.bias"]

    def norm(dst, name: str) -> None:
        dst.gamma, dst.beta = sd[f"{name}.weight"], sd[f"{name}.bias"]

    def fused(dst, names: list[str]) -> None:
        parts = [common_spec.LinearSpec() for _ in names]
        for part, name in zip(parts, names):
            linear(part, name)
        fuse_linear(dst, parts)

    def ffn(dst, name: str, norm_name: str) -> None:
        norm(dst.layer_norm, norm_name)
        linear(dst.linear_0, f"{name}.ff.0")
        linear(dst.linear_1, f"{name}.ff.3")

    for side in (spec.encoder, spec.decoder):
        emb = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        emb.weight = sd["tgt_embed.weight"]
        side.scale_embeddings = True
        side.position_encodings.encodings = model.positions.float().numpy()
    for i, layer in enumerate(spec.encoder.layer):
        name = f"encoder.{i}"
        fused(layer.self_attention.linear[0], [f"{name}.attn.{x}" for x in "qkv"])
        linear(layer.self_attention.linear[1], f"{name}.attn.out")
        norm(layer.self_attention.layer_norm, f"{name}.norm1")
        ffn(layer.ffn, name, f"{name}.norm2")
    for i, layer in enumerate(spec.decoder.layer):
        name = f"decoder.{i}"
        fused(layer.self_attention.linear[0], [f"{name}.self_attn.{x}" for x in "qkv"])
        linear(layer.self_attention.linear[1], f"{name}.self_attn.out")
        norm(layer.self_attention.layer_norm, f"{name}.norm1")
        linear(layer.attention.linear[0], f"{name}.cross_attn.q")
        fused(layer.attention.linear[1], [f"{name}.cross_attn.{x}" for x in "kv"])
        linear(layer.attention.linear[2], f"{name}.cross_attn.out")
        norm(layer.attention.layer_norm, f"{name}.norm2")
        ffn(layer.ffn, name, f"{name}.norm3")
    norm(spec.encoder.layer_norm, "enc_norm")
    norm(spec.decoder.layer_norm, "dec_norm")
    spec.decoder.projection.weight = sd["tgt_embed.weight"]
    pieces = [vocab.sp.id_to_piece(i) for i in range(len(vocab))]
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(str(directory))
    return ctranslate2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--checkpoint", type=Path, required=True)
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--sentences", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    ckpt = load_checkpoint(args.checkpoint, device)
    lines = [line for line in read_lines(args.src) if line.strip()][: args.sentences]
    ids = [x + [EOS] for x in ckpt.src_vocab.encode(lines)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [
        pad([torch.tensor(ids[i]) for i in order[k : k + args.batch_size]]).to(device)
        for k in range(0, len(order), args.batch_size)
    ]
    ensemble = Ensemble([ckpt.model])
    hf = to_hf(ckpt.model).to(device)

    def run_kdmt() -> list[list[int]]:
        return [h[0].tokens for x in batches for h in beam_search(ensemble, x, beam=args.beam, lenpen=1.0)]

    def run_hf() -> list[list[int]]:
        out = []
        for x in batches:
            max_new = int(((x != PAD).sum(1).max() * 1.5 + 10).item()) + 1
            gen = hf.generate(
                input_ids=x,
                attention_mask=(x != PAD).long(),
                num_beams=args.beam,
                length_penalty=1.0,
                early_stopping=True,
                max_new_tokens=max_new,
                do_sample=False,
                suppress_tokens=[PAD, BOS],
            )
            for row in gen[:, 1:].tolist():  # drop the decoder start token
                out.append(row[: row.index(EOS)] if EOS in row else [t for t in row if t != PAD])
        return out

    systems = {"kdmt": run_kdmt, "hf_generate": run_hf}
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        print("ctranslate2 is not installed: its column is left out", file=sys.stderr)
    else:
        ct2_dir = Path(tempfile.mkdtemp())
        to_ctranslate2(ckpt.model, ckpt.tgt_vocab, ct2_dir)
        ct2 = ctranslate2.Translator(str(ct2_dir), device="cpu", intra_threads=torch.get_num_threads())
        pieces = [[ckpt.src_vocab.sp.id_to_piece(t) for t in row if t != PAD] for x in batches for row in x.tolist()]
        sizes = [x.size(0) for x in batches]

        def run_ct2() -> list[list[int]]:
            out, start = [], 0
            for x, n in zip(batches, sizes):
                max_len = int(((x != PAD).sum(1).max() * 1.5 + 10).item()) + 1
                results = ct2.translate_batch(
                    pieces[start : start + n],
                    beam_size=args.beam,
                    length_penalty=1.0,
                    max_decoding_length=max_len,
                    max_batch_size=n,
                )
                out += [[ckpt.tgt_vocab.sp.piece_to_id(p) for p in r.hypotheses[0]] for r in results]
                start += n
            return out

        systems["ctranslate2"] = run_ct2
    times: dict[str, list[float]] = {name: [] for name in systems}
    outputs = {}
    with torch.inference_mode():
        for name, fn in systems.items():  # warm-up, and the outputs
            outputs[name] = fn()
        for _ in range(args.repeats):
            for name, fn in systems.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    n = len(lines)
    result = {
        "device": describe_device(device),
        "checkpoint": str(args.checkpoint),
        "sentences": n,
        "beam": args.beam,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
    }
    for name in systems:
        med = statistics.median(times[name])
        result[name] = {
            "median_s": round(med, 3),
            "sentences_per_s": round(n / med, 1),
            "generated_tokens": sum(len(o) + 1 for o in outputs[name]),
        }
    for name in systems:
        if name != "kdmt":
            result[f"speedup_kdmt_over_{name}"] = round(result[name]["median_s"] / result["kdmt"]["median_s"], 2)
            result[f"same_output_as_kdmt_{name}"] = sum(a == b for a, b in zip(outputs["kdmt"], outputs[name])) / n
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
