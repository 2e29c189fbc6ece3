"""kdmt export and the CTranslate2 engine: exported models compute and translate as kdmt does, kdmt's
commands take a CTranslate2 directory, distill --engine ctranslate2 resumes, and bad input fails cleanly."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from test_cli import assert_fails, kdmt, write
from test_distill import Killed, settings_for
from toy import decided, toy_pairs

from kdmt.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from kdmt.distill import distill_corpus
from kdmt.engines import CTranslate2Translator, converted_teacher
from kdmt.export import ExportOptions, export_checkpoint, huggingface_limit
from kdmt.files import read_lines
from kdmt.model import Transformer, make_config
from kdmt.translate import SearchOptions, Translator
from kdmt.vocab import BOS, EOS, Vocab

SOURCES = toy_pairs(100, seed=21)[0]  # the lengths the toy model learnt (3-8 letters)
# Engines that compute kdmt's scores and search by its rule decide as kdmt does wherever no decision of the
# search is closer than this (nats; float32 CTranslate2 is within 1e-4 a token: the test below): a machine's
# kernels can tip a near tie, not a line decided by more. int8 weights move the scores more.
FLOAT32_MARGIN, INT8_MARGIN = 2e-3, 0.2


@pytest.fixture(scope="module")
def ct2_dir(toy_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "toy-ct2"
    export_checkpoint(toy_model, out)
    return out


def random_checkpoint(toy_data, path, share_embeddings: bool):
    """An untrained model on the toy vocabulary (non-zero biases and norms, so that every weight shows)."""
    vocab = Vocab.load(toy_data / "spm.model")
    torch.manual_seed(5)
    config = make_config(len(vocab), len(vocab), "tiny", share_embeddings=share_embeddings, max_positions=40)
    model = Transformer(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.1)
    save_checkpoint(path, Checkpoint(model.eval(), vocab, vocab, {"role": "student"}))
    return path


def kdmt_log_probs(model: Transformer, src: list[int], tgt: list[int]) -> torch.Tensor:
    """Teacher-forced log-probabilities of tgt + EOS given src + EOS."""
    x, y = torch.tensor([src + [EOS]]), torch.tensor([[BOS] + tgt])
    with torch.no_grad():
        logp = F.log_softmax(model(x, y)[0], dim=-1)
    return logp.gather(1, torch.tensor(tgt + [EOS])[:, None])[:, 0]


@pytest.mark.parametrize("share_embeddings", [True, False])
def test_ctranslate2_scores_equal_kdmts_log_probabilities(toy_data, tmp_path, share_embeddings):
    ckpt_path = random_checkpoint(toy_data, tmp_path / "random.safetensors", share_embeddings)
    export_checkpoint(ckpt_path, tmp_path / "ct2")
    ckpt = load_checkpoint(ckpt_path)
    engine = CTranslate2Translator(tmp_path / "ct2", SearchOptions())
    src_ids = ckpt.src_vocab.encode(SOURCES[:20])
    tgt_ids = ckpt.tgt_vocab.encode([" ".join(reversed(s.split())) for s in SOURCES[:20]])
    piece = ckpt.src_vocab.sp.id_to_piece
    scored = engine.translator.score_batch(
        [[piece(t) for t in s] for s in src_ids], [[piece(t) for t in t_] for t_ in tgt_ids]
    )
    for s, t, result in zip(src_ids, tgt_ids, scored):
        expected = kdmt_log_probs(ckpt.model, s, t)
        assert torch.allclose(torch.tensor(result.log_probs), expected, atol=1e-4), (result.log_probs, expected)


@pytest.mark.parametrize("beam", [1, 5])
def test_ctranslate2_export_translates_as_kdmt(toy_model, ct2_dir, beam):
    options = SearchOptions(beam=beam)
    translator = Translator([load_checkpoint(toy_model)], options)
    ours = translator.translate_nbest(SOURCES, nbest=beam)
    theirs = CTranslate2Translator(ct2_dir, options).translate_nbest(SOURCES, nbest=beam)
    lines = decided(translator, SOURCES, FLOAT32_MARGIN)
    for i in lines:  # the same search: the same best hypothesis (beam search's scores normalised alike)
        assert theirs[i][0].text == ours[i][0].text, SOURCES[i]
        assert beam == 1 or theirs[i][0].score == pytest.approx(ours[i][0].score, abs=1e-3), SOURCES[i]
    assert all(len(c) == beam for c in theirs)  # n-best lists


def test_int8_export_translates_from_the_command_line(toy_model, ct2_dir, tmp_path):
    out = tmp_path / "int8"
    result = kdmt("export", toy_model, "-o", out, "--quantization", "int8")
    assert result.exit_code == 0, result.stderr
    record = json.loads((out / "kdmt_export.json").read_text())
    assert record["quantization"] == "int8" and record["checkpoint"] == str(toy_model)
    assert (out / "model.bin").stat().st_size < 0.5 * (ct2_dir / "model.bin").stat().st_size
    result = kdmt("translate", "-m", out, "--threads", "1", input="a b c\n\nd e f g\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "c b a\n\ng f e d\n"
    reference = Translator([load_checkpoint(toy_model)], SearchOptions(beam=1))  # greedy: few near ties
    int8 = CTranslate2Translator(out, SearchOptions(beam=1)).translate(SOURCES)
    expected = reference.translate(SOURCES)
    lines = decided(reference, SOURCES, INT8_MARGIN)
    # int8 weights approximate float32's: on the lines the float model decides clearly, most of the same
    # translations (not all: how far int8 moves a toy model's scores depends on the machine's kernels; 87 of 99
    # on an AMD EPYC with AVX2, all on another machine); a broken export agrees on few
    assert sum(int8[i] == expected[i] for i in lines) >= 0.75 * len(lines)


def test_eval_scores_a_ctranslate2_directory_beside_its_checkpoint(toy_model, ct2_dir, tmp_path):
    src, ref = toy_pairs(50, seed=22)
    src_file, ref_file = write(tmp_path / "test.src", src), write(tmp_path / "test.ref", ref)
    args = ["--src", src_file, "--ref", ref_file, "--beam", "3", "--threads", "1", "--report", tmp_path / "r.json"]
    result = kdmt("eval", toy_model, ct2_dir, *args, "--hyps-dir", tmp_path / "hyps")
    assert result.exit_code == 0, result.stderr
    ours, theirs = json.loads((tmp_path / "r.json").read_text())
    assert theirs["checkpoint"] == str(ct2_dir) and theirs["bleu"] > 90 and ours["bleu"] > 90
    assert theirs["parameters"] == ours["parameters"]
    assert theirs["size_bytes"] == sum(p.stat().st_size for p in ct2_dir.iterdir())
    assert theirs["made_with"]["export"] == {"format": "ctranslate2", "quantization": "float32"}
    assert "exported to ctranslate2 float32" in result.stderr
    hyps = {p.name: read_lines(p) for p in (tmp_path / "hyps").iterdir()}
    theirs_hyps, ours_hyps = hyps.pop(f"{ct2_dir.name}.hyp"), hyps.popitem()[1]
    translator = Translator([load_checkpoint(toy_model)], SearchOptions(beam=3))
    assert all(theirs_hyps[i] == ours_hyps[i] for i in decided(translator, src, FLOAT32_MARGIN))


def test_huggingface_export_loads_with_auto_classes_and_generates_kdmts_outputs(toy_model, toy_data, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    # the network: logits of a random model equal kdmt's (positions, norms, scaled and tied embeddings)
    random_path = random_checkpoint(toy_data, tmp_path / "random.safetensors", share_embeddings=True)
    result = kdmt("export", random_path, "-o", tmp_path / "hf-random", "--format", "huggingface")
    assert result.exit_code == 0, result.stderr
    hf = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf-random").eval()
    model = load_checkpoint(random_path).model
    x, y = torch.tensor([[4, 5, 6, 7, EOS], [8, 9, EOS, 0, 0]]), torch.tensor([[BOS, 6, 5, 4], [BOS, 9, 8, EOS]])
    with torch.no_grad():
        theirs = hf(input_ids=x, attention_mask=(x != 0).long(), decoder_input_ids=y).logits
        assert torch.allclose(theirs, model(x, y), atol=1e-4)

    # the search: generate() with the exported generation config gives kdmt's beam-5 translations
    export_checkpoint(toy_model, tmp_path / "hf", ExportOptions("huggingface"))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    translator = Translator([load_checkpoint(toy_model)], SearchOptions(beam=5))
    expected = translator.translate(SOURCES[:30])
    for line, want in zip(SOURCES[:30], expected):
        batch = tokenizer([line], return_tensors="pt")
        assert batch.input_ids[0].tolist() == translator.src_vocab.encode([line])[0] + [EOS]
        limit = translator.max_output_length(batch.input_ids.size(1))
        with torch.no_grad():
            out = hf.generate(**batch, max_new_tokens=limit + 1)  # + 1: generate() counts EOS
        assert tokenizer.decode(out[0], skip_special_tokens=True) == want


def test_distill_with_ctranslate2_resumes_to_kdmts_bytes(toy_model, tmp_path, monkeypatch):
    monkeypatch.setenv("KDMT_CACHE", str(tmp_path / "cache"))
    src_lines = toy_pairs(40, seed=11)[0]
    src_lines[3], src_lines[5] = "", "c c c c"  # an empty line keeps its place; a loop is filtered
    src = write(tmp_path / "train.src", src_lines)
    engine = CTranslate2Translator(converted_teacher(toy_model), SearchOptions(beam=3))
    assert converted_teacher(toy_model) == converted_teacher(toy_model)  # converted once, then cached
    assert len([p for p in (tmp_path / "cache" / "ctranslate2").iterdir() if p.is_dir()]) == 1  # and its lock
    settings = settings_for(toy_model, src, engine="ctranslate2 float32")

    full = tmp_path / "full.tgt"
    stats = distill_corpus(engine, settings, full)

    def kill_after_third(index):
        if index == 2:
            raise Killed

    resumed = tmp_path / "resumed.tgt"
    with pytest.raises(Killed):
        distill_corpus(engine, settings, resumed, after_shard=kill_after_third)
    assert not resumed.exists()
    assert distill_corpus(engine, settings, resumed) == stats
    for suffix in ("", ".json", ".nbest"):
        assert (tmp_path / f"resumed.tgt{suffix}").read_bytes() == (tmp_path / f"full.tgt{suffix}").read_bytes()

    kdmt_engine = Translator([load_checkpoint(toy_model)], SearchOptions(beam=3))
    distill_corpus(kdmt_engine, settings_for(toy_model, src), tmp_path / "kdmt.tgt")
    theirs, ours = read_lines(full), read_lines(tmp_path / "kdmt.tgt")
    assert all(theirs[i] == ours[i] for i in decided(kdmt_engine, src_lines, FLOAT32_MARGIN))
    assert stats.filtered["repeat"] >= 1

    cli = ["-o", tmp_path / "cli.tgt", "--beam", "3", "--engine", "ctranslate2"]  # the settings' beam
    result = kdmt("distill", "-t", toy_model, "--src", src, *cli)
    assert result.exit_code == 0, result.stderr
    assert read_lines(tmp_path / "cli.tgt") == read_lines(full)
    assert json.loads((tmp_path / "cli.tgt.json").read_text())["settings"]["engine"] == "ctranslate2 float32"


# --- bad input ---------------------------------------------------------------------------------
def test_export_refuses_bad_input_and_writes_nothing(toy_model, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint")
    assert_fails(kdmt("export", corrupt, "-o", tmp_path / "a"), "not a readable kdmt checkpoint")
    assert_fails(kdmt("export", toy_model, "-o", tmp_path / "b", "--quantization", "int4"), "--quantization")
    assert_fails(kdmt("export", toy_model, "-o", tmp_path / "c", "--format", "onnx"), "unknown format")
    assert [p.name for p in tmp_path.iterdir()] == ["corrupt.safetensors"]

    existing = tmp_path / "existing"
    existing.mkdir()
    write(existing / "keep.txt", ["mine"])
    assert_fails(kdmt("export", toy_model, "-o", existing), "--force")
    assert (existing / "keep.txt").exists()
    assert kdmt("export", toy_model, "-o", existing, "--force").exit_code == 0
    assert not (existing / "keep.txt").exists() and (existing / "model.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.safetensors", "existing"]  # no temporary left


def test_engine_misuse_fails_in_one_line(toy_model, ct2_dir, tmp_path):
    src = write(tmp_path / "s", ["a b"])
    two = ["-t", toy_model, "-t", toy_model]
    assert_fails(kdmt("distill", *two, "--src", src, "-o", tmp_path / "o", "--engine", "ctranslate2"), "ensembles")
    assert_fails(kdmt("distill", "-t", toy_model, "--src", src, "-o", tmp_path / "o", "--engine", "x"), "--engine")
    quantized = ["--quantization", "int8"]
    assert_fails(kdmt("distill", "-t", toy_model, "--src", src, "-o", tmp_path / "o", *quantized), "--engine")
    assert_fails(kdmt("translate", "-m", ct2_dir, "-m", ct2_dir, input="a\n"), "ensembles")
    (ct2_dir.parent / "broken").mkdir()
    (ct2_dir.parent / "broken" / "kdmt_export.json").write_text("{")
    assert_fails(kdmt("translate", "-m", ct2_dir.parent / "broken", input="a\n"), "not a valid kdmt export record")


def test_without_the_export_extra_the_command_says_what_to_install(toy_model, tmp_path):
    fake = tmp_path / "site" / "ctranslate2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no ctranslate2 here')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{REPO}"}
    cmd = [sys.executable, "-m", "kdmt", "export", str(toy_model), "-o", str(tmp_path / "out")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "pip install 'kdmt[export]'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_the_conversion_cache_is_kept_per_kdmt_and_ctranslate2_version(toy_data, tmp_path, monkeypatch):
    monkeypatch.setenv("KDMT_CACHE", str(tmp_path / "cache"))
    teacher = random_checkpoint(toy_data, tmp_path / "teacher.safetensors", share_embeddings=True)
    first = converted_teacher(teacher)
    assert converted_teacher(teacher) == first
    monkeypatch.setattr("ctranslate2.__version__", "0.0.1")
    other_ctranslate2 = converted_teacher(teacher)
    monkeypatch.setattr("kdmt.engines.__version__", "0.0.1")
    other_kdmt = converted_teacher(teacher)
    assert len({first, other_ctranslate2, other_kdmt}) == 3  # each version converts again, into its own entry
    entries = [p for p in (tmp_path / "cache" / "ctranslate2").iterdir() if p.suffix != ".lock"]
    assert sorted(entries) == sorted([first, other_ctranslate2, other_kdmt])


def test_min_len_in_the_ctranslate2_engine_as_in_kdmt(toy_data, tmp_path):
    path = random_checkpoint(toy_data, tmp_path / "eos.safetensors", share_embeddings=True)
    ckpt = load_checkpoint(path)
    with torch.no_grad():  # the decoder's output is EOS's embedding whatever it reads: EOS comes first at every step
        ckpt.model.dec_norm.weight.zero_()
        ckpt.model.dec_norm.bias.copy_(ckpt.model.tgt_embed.weight[EOS] * 4)
    save_checkpoint(path, ckpt)
    export_checkpoint(path, tmp_path / "ct2")
    for min_len in (0, 1, 3):
        for beam in (1, 3):
            options = SearchOptions(beam=beam, min_len=min_len)
            ours = Translator([load_checkpoint(path)], options).translate_nbest(SOURCES[:6])
            theirs = CTranslate2Translator(tmp_path / "ct2", options).translate_nbest(SOURCES[:6])
            assert [c[0].length for c in ours] == [min_len] * 6, (min_len, beam)
            assert [c[0].text for c in theirs] == [c[0].text for c in ours], (min_len, beam)


def test_the_huggingface_export_stops_where_kdmts_search_does(toy_data, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    path = random_checkpoint(toy_data, tmp_path / "never-ends.safetensors", share_embeddings=True)  # max_positions 40
    ckpt = load_checkpoint(path)
    with torch.no_grad():  # EOS last at every step, whatever the decoder reads: every hypothesis is cut
        ckpt.model.dec_norm.weight.zero_()
        ckpt.model.dec_norm.bias.copy_(ckpt.model.tgt_embed.weight[EOS] * -4)
    save_checkpoint(path, ckpt)
    export_checkpoint(path, tmp_path / "hf", ExportOptions("huggingface"))
    hf = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    config = hf.generation_config
    assert (config.min_new_tokens, config.kdmt_max_len_a, config.kdmt_max_len_b) == (1, 1.5, 10)
    x = torch.tensor([[4, 5, 6, EOS]])
    for options, limit in ((SearchOptions(beam=1, max_len_b=100), None), (SearchOptions(beam=1), huggingface_limit)):
        want = Translator([load_checkpoint(path)], options).translate_ids([x[0].tolist()])[0][0].tokens
        assert len(want) == (39 if limit is None else int(4 * 1.5 + 10))  # the position table's cap, or a·|src| + b
        extra = {} if limit is None else {"max_new_tokens": limit(config, x.size(1))}
        with torch.no_grad():
            out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), num_beams=1, **extra)[0].tolist()
        assert out == [BOS, *want, EOS]  # cut at the same length, EOS forced
