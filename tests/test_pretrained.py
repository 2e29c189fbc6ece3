"""Teachers made elsewhere (kdmt.pretrained): Hugging Face MarianMT and M2M100 models
(tests/hf_models.py), built from configs and trained here on the toy task, translate through generate() and CTranslate2
alike and distill; language codes force the target language; an OPUS-MT-style CTranslate2 directory
translates; kdmt's own Hugging Face export distills as its checkpoint does; a directory that asks for custom
code, or of an unsupported model type, is refused in one line."""

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from hf_models import distilled, marian, train_spm
from test_cli import assert_fails, kdmt, write
from toy import LETTERS, toy_pairs

from kdmt.export import ExportOptions, export_checkpoint
from kdmt.pretrained import converted

transformers = pytest.importorskip("transformers")
pytest.importorskip("ctranslate2")

SOURCES = toy_pairs(100, seed=41)[0]


def train(model, tokenizer, examples: list[tuple[str, str, int | None]], steps: int) -> None:
    """Teach `model` the toy (source, target, target language token or None) examples with teacher-forced
    cross-entropy (Adam, batches of 64)."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    pad = model.config.pad_token_id
    for step in range(steps):
        batch = [examples[(step * 64 + i) % len(examples)] for i in range(64)]
        enc = tokenizer([s for s, _, _ in batch], padding=True, return_tensors="pt")
        eos = tokenizer.eos_token_id
        labels = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t)) + [eos] for _, t, _ in batch]
        labels = [([lang] if lang is not None else []) + ids for ids, (_, _, lang) in zip(labels, batch)]
        width = max(map(len, labels))
        labels = torch.tensor([ids + [-100] * (width - len(ids)) for ids in labels])
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # OPUS-MT's layout: the pad row stays zero (CTranslate2 starts from zeros)
            model.get_input_embeddings().weight[pad] = 0
    model.eval()


@pytest.fixture(scope="session")
def marian_dir(tmp_path_factory):
    """A MarianMT model of the toy reversal task in OPUS-MT's layout (tests/hf_models.py: </s> 0,
    <unk> 1, <pad> last), a word a piece, trained here."""
    lines = toy_pairs(300, seed=1)[0]
    out = marian(
        tmp_path_factory.mktemp("marian"),
        lines,
        lines,
        joint=True,
        sizes=(len(LETTERS) + 3, 0),  # unk, <s>, </s> and the letters
        spm_type="word",
        d_model=32,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        init_std=0.2,  # transformers' 0.02 leaves a model this small stuck at the letters' frequencies
        scale_embedding=True,
        dropout=0.0,
        activation_function="relu",
        forced_eos_token_id=0,
    )
    model = transformers.MarianMTModel.from_pretrained(out)
    for stack in (model.model.encoder, model.model.decoder):  # sinusoidal: from_pretrained leaves them trainable
        stack.embed_positions.weight.requires_grad_(False)
    tokenizer = transformers.MarianTokenizer.from_pretrained(out)
    train(model, tokenizer, [(s, t, None) for s, t in zip(*toy_pairs(2000, seed=1))], steps=400)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def m2m_dir(tmp_path_factory):
    """An M2M100 model that reverses the letters into 'en' and copies them into 'fr'."""
    root = tmp_path_factory.mktemp("m2m")
    model_file = str(root / "toy.spm")  # a word a piece, with the M2M100 model's special ids
    train_spm(model_file, toy_pairs(300, seed=1)[0], len(LETTERS) + 4, "word", {"bos": 0, "pad": 1, "eos": 2, "unk": 3})
    sp = spm.SentencePieceProcessor(model_file=model_file)
    (root / "vocab.json").write_text(json.dumps({sp.id_to_piece(i): i for i in range(sp.get_piece_size())}))
    codes = transformers.models.m2m_100.tokenization_m2m_100.FAIRSEQ_LANGUAGE_CODES["m2m100"]
    tokenizer = transformers.M2M100Tokenizer(  # the language tokens listed, as in the hub's M2M100 tokenizers
        str(root / "vocab.json"), model_file, src_lang="de", additional_special_tokens=[f"__{c}__" for c in codes]
    )
    config = transformers.M2M100Config(
        vocab_size=len(tokenizer.encoder) + len(tokenizer.lang_code_to_id) + tokenizer.num_madeup_words,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        init_std=0.2,
        dropout=0.0,
        activation_function="relu",
    )
    torch.manual_seed(0)
    model = transformers.M2M100ForConditionalGeneration(config)
    examples = [
        (s, " ".join(reversed(s.split())), tokenizer.get_lang_id("en"))
        if i % 2
        else (s, s, tokenizer.get_lang_id("fr"))
        for i, s in enumerate(toy_pairs(2000, seed=1)[0])
    ]
    train(model, tokenizer, examples, steps=500)
    out = root / "hf"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def reverse(line: str) -> str:
    return " ".join(reversed(line.split()))


def generated(directory, lines: list[str], beam: int, tgt_lang: str | None = None) -> list[str]:
    """generate() called directly, line by line, with kdmt's settings: beam, length penalty 1, early stopping,
    a·|source| + b tokens (1.5, 10) and EOS, PAD never generated; a target language's token forced first."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(directory).eval()
    forced = [tokenizer.get_lang_id(tgt_lang)] if tgt_lang else []
    out = []
    for line in lines:
        batch = tokenizer([line], return_tensors="pt")
        limit = int(batch.input_ids.size(1) * 1.5 + 10)
        with torch.no_grad():
            ids = model.generate(
                **batch,
                num_beams=beam,
                length_penalty=1.0,
                early_stopping=True if beam > 1 else None,
                max_new_tokens=len(forced) + limit + 1,
                forced_bos_token_id=forced[0] if forced else None,
                suppress_tokens=[model.config.pad_token_id],
            )
        out.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    return out


def agree(a: list[str], b: list[str]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


@pytest.mark.parametrize("kind", ["marian", "m2m"])
def test_a_huggingface_teacher_distills_through_both_engines_as_generate_does(
    kind, marian_dir, m2m_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("KDMT_CACHE", str(tmp_path / "cache"))
    teacher, languages = (marian_dir, []) if kind == "marian" else (m2m_dir, ["--src-lang", "de", "--tgt-lang", "en"])
    by_engine = {
        engine: distilled(teacher, SOURCES, tmp_path, engine, "--engine", engine, *languages)
        for engine in ("transformers", "ctranslate2")
    }
    assert agree(by_engine["transformers"], by_engine["ctranslate2"]) >= 0.99
    direct = generated(teacher, SOURCES, beam=5, tgt_lang="en" if kind == "m2m" else None)
    assert agree(by_engine["transformers"], direct) >= 0.99
    assert agree(direct, [reverse(s) for s in SOURCES]) > 0.3  # a trained model: not a run to the length limit
    default = distilled(teacher, SOURCES, tmp_path, "default", *languages)
    assert default == by_engine["ctranslate2"]  # the default engine
    assert len(list((tmp_path / "cache" / "ctranslate2").glob("hf-*-float32-*[!k]"))) == 1  # converted once


def test_language_codes_force_the_target_language_and_are_required(m2m_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KDMT_CACHE", str(tmp_path / "cache"))
    src = write(tmp_path / "src", SOURCES)
    for engine in ("transformers", "ctranslate2"):
        outputs = {}
        for lang in ("en", "fr"):  # the model reverses into en, copies into fr
            result = kdmt(
                "translate", "-m", m2m_dir, "-i", src, "--engine", engine, "--src-lang", "de", "--tgt-lang", lang
            )
            assert result.exit_code == 0, result.stderr
            outputs[lang] = result.stdout.splitlines()
        assert agree(outputs["fr"], SOURCES) > agree(outputs["en"], SOURCES) + 0.3
        assert agree(outputs["en"], [reverse(s) for s in SOURCES]) > agree(outputs["fr"], [reverse(s) for s in SOURCES])
    assert_fails(kdmt("translate", "-m", m2m_dir, "--src-lang", "de", input="a b\n"), "--tgt-lang")
    assert_fails(kdmt("translate", "-m", m2m_dir, "--src-lang", "de", "--tgt-lang", "xx", input="a b\n"), "'xx'")


def test_an_opus_mt_style_ctranslate2_directory_translates_with_its_own_spm(marian_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KDMT_CACHE", str(tmp_path / "cache"))
    opus = tmp_path / "opus-mt"  # what ct2-opus-mt-converter writes: the model, its vocabulary, both spm files
    shutil.copytree(converted(marian_dir), opus)
    for name in ("source.spm", "target.spm"):
        shutil.copy(marian_dir / name, opus / name)
    config = json.loads((opus / "config.json").read_text())
    (opus / "config.json").write_text(json.dumps({**config, "add_source_eos": True}))  # Marian's converter's
    result = kdmt("translate", "-m", opus, "-i", write(tmp_path / "src", SOURCES))
    assert result.exit_code == 0, result.stderr
    assert agree(result.stdout.splitlines(), generated(marian_dir, SOURCES, beam=5)) >= 0.99
    (opus / "source.spm").unlink()
    assert_fails(kdmt("translate", "-m", opus, input="a b\n"), "source.spm and target.spm")


def test_a_stranger_directory_that_asks_for_code_or_is_unsupported_is_refused(marian_dir, tmp_path):
    def variant(name: str, file: str, **changes) -> Path:
        out = tmp_path / name
        shutil.copytree(marian_dir, out)
        settings = json.loads((out / file).read_text())
        (out / file).write_text(json.dumps({**settings, **changes}))
        return out

    remote = {"AutoModelForSeq2SeqLM": "evil.Model"}
    assert_fails(kdmt("translate", "-m", variant("code", "config.json", auto_map=remote), input="a\n"), "custom code")
    tokenizer = variant("tokenizer", "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.Tok", None]})
    assert_fails(kdmt("translate", "-m", tokenizer, "--engine", "transformers", input="a\n"), "custom code")
    bert = variant("bert", "config.json", model_type="bert")
    assert_fails(kdmt("distill", "-t", bert, "--src", write(tmp_path / "s", ["a"]), "-o", tmp_path / "o"), "marian")
    assert_fails(kdmt("translate", "-m", marian_dir, "--engine", "kdmt", input="a\n"), "--engine ctranslate2 or")


@pytest.mark.parametrize(
    "search", [["--beam", "1"], ["--beam", "5"], ["--beam", "1", "--max-len-a", "0", "--max-len-b", "3"]]
)
def test_kdmts_huggingface_export_as_a_teacher_distills_as_its_checkpoint(toy_model, search, tmp_path):
    export = tmp_path / "hf-export"
    export_checkpoint(toy_model, export, ExportOptions("huggingface"))
    ours = distilled(toy_model, SOURCES, tmp_path, "kdmt", *search)
    theirs = distilled(export, SOURCES, tmp_path, "export", *search)  # the default engine: transformers (no conversion)
    assert agree(theirs, ours) >= 0.99


def test_eval_and_report_show_the_pretrained_teacher_beside_a_student(marian_dir, toy_model, tmp_path, monkeypatch):
    monkeypatch.setenv("KDMT_CACHE", str(tmp_path / "cache"))
    src, ref = write(tmp_path / "test.src", SOURCES), write(tmp_path / "test.ref", [reverse(s) for s in SOURCES])
    result = kdmt("eval", marian_dir, toy_model, "--src", src, "--ref", ref, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    teacher, student = json.loads((tmp_path / "r.json").read_text())
    assert teacher["made_with"]["pretrained"]["type"] == "marian" and teacher["bleu"] > 30
    assert "pretrained marian, through ctranslate2 float32" in " ".join(result.stderr.split())
    hf_parameters = transformers.AutoModelForSeq2SeqLM.from_pretrained(marian_dir).num_parameters()
    assert 0.8 * hf_parameters < teacher["parameters"] <= hf_parameters  # CTranslate2's: no position tables
    result = kdmt("report", tmp_path / "r.json", "-o", tmp_path / "report", "--markdown")
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["checkpoint"] for r in rows if "bleu_vs_teacher" in r] == [str(marian_dir), str(toy_model)]
