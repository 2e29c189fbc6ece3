"""Many-to-many and prefixed Hugging Face teachers (kdmt.pretrained): tiny random models built offline, their
tokenizers made from a vocabulary of the toy letters (a word is one piece). NLLB's language codes (an M2M100
model with an NllbTokenizer, deu_Latn) and MBart-50's (de_DE) put the source language's token first and
force the target language's token first, through both engines, and steer the model; a missing or unknown
code is refused in one line. T5's source prefix reaches the model through both engines. An MBart config
that CTranslate2's converter cannot read is refused in one line."""

import json

import pytest
import torch
from test_cli import assert_fails, kdmt, write
from toy import LETTERS, toy_pairs

from kdmt import engines
from kdmt.files import read_lines
from kdmt.pretrained import TransformersTranslator

transformers = pytest.importorskip("transformers")
pytest.importorskip("ctranslate2")

LINES = toy_pairs(6, seed=3)[0]
ENGINES = ("transformers", "ctranslate2")
# per model: its source language (not its tokenizer's default), a target language and another one
CODES = {"nllb": ("fra_Latn", "deu_Latn", "ita_Latn"), "mbart50": ("fr_XX", "de_DE", "it_IT")}
TINY = {  # the BART-like models' sizes; weights far from uniform (no near ties between the engines)
    "d_model": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "max_position_embeddings": 64,
    "init_std": 0.5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
}


def word_pieces(*extra: str) -> list[tuple[str, float]]:
    """A unigram vocabulary of the toy task: each word (▁a) one piece, `extra` pieces, then the letters alone."""
    return [("▁" + c, -1.0) for c in (*LETTERS, *extra)] + [("▁", -2.0)] + [(c, -3.0) for c in LETTERS]


def save(model_class, config, tokenizer, out, n_pieces: int):
    """A random model of `config` saved with its tokenizer in `out`. The rows of the tokens after the first
    `n_pieces` (the language codes) are scaled down: a random model would emit them (decoded as nothing)."""
    torch.manual_seed(0)
    model = model_class(config)
    with torch.no_grad():
        model.get_input_embeddings().weight[n_pieces:] *= 0.1
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def nllb_dir(tmp_path_factory):
    """NLLB's layout: an M2M100 model with an NllbTokenizer (BPE: fairseq's specials, the pieces, then the
    language codes as special tokens); the decoder starts with </s>, the target language's token forced."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "▁": 4}
    vocab |= {c: len(vocab) + i for i, c in enumerate(LETTERS)}
    vocab |= {"▁" + c: len(vocab) + i for i, c in enumerate(LETTERS)}
    tokenizer = transformers.NllbTokenizer(vocab=vocab, merges=[("▁", c) for c in LETTERS])
    config = transformers.M2M100Config(vocab_size=len(tokenizer), tokenizer_class="NllbTokenizer", **TINY)
    out = tmp_path_factory.mktemp("nllb") / "hf"
    return save(transformers.M2M100ForConditionalGeneration, config, tokenizer, out, len(vocab))


@pytest.fixture(scope="module")
def mbart50_dir(tmp_path_factory):
    """MBart-50's layout: an MBart50Tokenizer (unigram: fairseq's specials, the pieces, the language codes,
    <mask>) and its hub config's fields (normalize_before, the tokenizer class that makes CTranslate2 start
    the decoder with </s>)."""
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), *word_pieces()]  # sentencepiece's order
    tokenizer = transformers.MBart50Tokenizer(vocab=pieces, bos_token="<s>")
    config = transformers.MBartConfig(
        vocab_size=len(tokenizer),
        tokenizer_class="MBart50Tokenizer",
        normalize_before=True,
        normalize_embedding=True,
        **TINY,
    )
    out = tmp_path_factory.mktemp("mbart50") / "hf"
    return save(transformers.MBartForConditionalGeneration, config, tokenizer, out, len(pieces) + 1)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A T5 model whose tokenizer knows the task prefix "translate:" as one piece."""
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
    out = tmp_path_factory.mktemp("t5") / "hf"
    return save(transformers.T5ForConditionalGeneration, config, tokenizer, out, len(pieces))


def decoded(monkeypatch) -> list[tuple[list[int], int]]:
    """What the pretrained engines decode while kdmt runs: each sentence's source ids and the id of its first
    target token, recorded from generate()'s inputs and outputs and from CTranslate2's (its tokens' ids in
    the converted model's vocabulary)."""
    seen: list[tuple[list[int], int]] = []
    open_pretrained = engines.open_pretrained

    def recording(*args, **kwargs):
        meta, translator = open_pretrained(*args, **kwargs)
        if isinstance(translator, TransformersTranslator):
            generate = translator.model.generate

            def spy(**inputs):
                result = generate(**inputs)
                for ids, mask, first in zip(inputs["input_ids"], inputs["attention_mask"], result.sequences[:, 1]):
                    seen.append((ids[mask.bool()].tolist(), int(first)))
                return result

            translator.model.generate = spy
        else:
            vocabulary = json.loads((translator.directory / "shared_vocabulary.json").read_text())
            translator.translator = CTranslate2Spy(translator.translator, vocabulary, seen)
        return meta, translator

    monkeypatch.setattr(engines, "open_pretrained", recording)
    return seen


class CTranslate2Spy:
    """A ctranslate2.Translator whose translate_batch records its sources and first target tokens."""

    def __init__(self, translator, vocabulary: list[str], seen: list[tuple[list[int], int]]):
        self.translator, self.ids, self.seen = translator, {t: i for i, t in enumerate(vocabulary)}, seen

    def translate_batch(self, source, **options):
        results = self.translator.translate_batch(source, **options)
        for tokens, result in zip(source, results):
            first = result.result().hypotheses[0][0]
            self.seen.append(([self.ids[t] for t in tokens], self.ids[first]))
        return results


def distilled(teacher, tmp_path, name: str, *args) -> list[str]:
    src = write(tmp_path / "train.src", LINES)
    out = tmp_path / f"{name}.tgt"
    result = kdmt("distill", "-t", teacher, "--src", src, "-o", out, "--no-filter", *args)
    assert result.exit_code == 0, result.stderr
    return read_lines(out)


@pytest.mark.parametrize("kind", ["nllb", "mbart50"])
def test_language_codes_force_the_target_languages_token_through_both_engines(kind, request, tmp_path, monkeypatch):
    monkeypatch.setenv("KDMT_CACHE", str(tmp_path / "cache"))
    teacher, (src, tgt, other) = request.getfixturevalue(f"{kind}_dir"), CODES[kind]
    tokenizer = transformers.AutoTokenizer.from_pretrained(teacher)
    seen = decoded(monkeypatch)
    outputs = {}
    for engine in ENGINES:
        for lang in (tgt, other):
            seen.clear()
            args = ["--engine", engine, "--src-lang", src, "--tgt-lang", lang]
            outputs[engine, lang] = distilled(teacher, tmp_path, f"{engine}-{lang}", *args)
            assert [first for _, first in seen] == [tokenizer.convert_tokens_to_ids(lang)] * len(LINES)
            assert [ids[0] for ids, _ in seen] == [tokenizer.convert_tokens_to_ids(src)] * len(LINES)
    assert outputs["transformers", tgt] == outputs["ctranslate2", tgt]
    assert outputs["transformers", tgt] != outputs["transformers", other]  # the forced token steers the model
    assert_fails(kdmt("translate", "-m", teacher, "--src-lang", src, input="a b\n"), "needs --tgt-lang")
    unknown = kdmt("translate", "-m", teacher, "--src-lang", src, "--tgt-lang", "xx_Xxxx", input="a b\n")
    assert_fails(unknown, "--tgt-lang 'xx_Xxxx' is not one of its language codes")


def test_a_source_prefix_reaches_a_t5_teacher_through_both_engines(t5_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KDMT_CACHE", str(tmp_path / "cache"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(t5_dir)
    seen = decoded(monkeypatch)
    outputs = {}
    for engine in ENGINES:
        for prefix in ("translate: ", ""):
            seen.clear()
            args = ["--engine", engine, "--source-prefix", prefix]
            outputs[engine, prefix] = distilled(t5_dir, tmp_path, f"{engine}-{len(prefix)}", *args)
            expected = tokenizer([prefix + line for line in LINES])["input_ids"]
            assert sorted(ids for ids, _ in seen) == sorted(expected)
    prefix_id = tokenizer.convert_tokens_to_ids("▁translate:")  # the prefix: one piece, not <unk>
    assert {ids[0] for ids in tokenizer(["translate: " + line for line in LINES])["input_ids"]} == {prefix_id}
    assert outputs["transformers", "translate: "] == outputs["ctranslate2", "translate: "]
    assert outputs["transformers", "translate: "] != outputs["transformers", ""]


def test_a_config_that_ctranslate2_cannot_convert_is_refused_in_one_line(mbart50_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KDMT_CACHE", str(tmp_path / "cache"))
    teacher = tmp_path / "mbart"
    teacher.mkdir()
    for file in mbart50_dir.iterdir():
        (teacher / file.name).write_bytes(file.read_bytes())
    config = json.loads((teacher / "config.json").read_text())
    del config["normalize_before"]  # transformers' MBartConfig has no such field; CTranslate2's converter reads it
    (teacher / "config.json").write_text(json.dumps(config))
    languages = ["--src-lang", "en_XX", "--tgt-lang", "de_DE"]
    assert_fails(kdmt("translate", "-m", teacher, *languages, input="a b\n"), "CTranslate2 cannot convert it")
    result = kdmt("translate", "-m", teacher, *languages, "--engine", "transformers", input="a b\n")
    assert result.exit_code == 0, result.stderr
