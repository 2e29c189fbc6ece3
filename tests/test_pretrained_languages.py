"""Many-to-many and prefixed Hugging Face teachers (kdmt.pretrained): tiny random models built offline, their
tokenizers made from a vocabulary of the toy letters (a word is one piece). NLLB's language codes (an M2M100
model with an NllbTokenizer, deu_Latn) and MBart-50's (de_DE) put the source language's token first and
force the target language's token first, through both engines, and steer the model; a missing or unknown
code is refused in one line. T5's source prefix reaches the model through both engines. An MBart config
that CTranslate2's converter cannot read is refused in one line."""

import json

import pytest
from hf_models import distilled, mbart50, nllb, t5
from test_cli import assert_fails, kdmt
from toy import toy_pairs

from kdmt import engines
from kdmt.pretrained import TransformersTranslator

transformers = pytest.importorskip("transformers")
pytest.importorskip("ctranslate2")

LINES = toy_pairs(6, seed=3)[0]
ENGINES = ("transformers", "ctranslate2")
# per model: its source language (not its tokenizer's default), a target language and another one
CODES = {"nllb": ("fra_Latn", "deu_Latn", "ita_Latn"), "mbart50": ("fr_XX", "de_DE", "it_IT")}


@pytest.fixture(scope="module")
def nllb_dir(tmp_path_factory):
    return nllb(tmp_path_factory.mktemp("nllb") / "hf")


@pytest.fixture(scope="module")
def mbart50_dir(tmp_path_factory):
    return mbart50(tmp_path_factory.mktemp("mbart50") / "hf")


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return t5(tmp_path_factory.mktemp("t5") / "hf")


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
            outputs[engine, lang] = distilled(teacher, LINES, tmp_path, f"{engine}-{lang}", *args)
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
            outputs[engine, prefix] = distilled(t5_dir, LINES, tmp_path, f"{engine}-{len(prefix)}", *args)
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
