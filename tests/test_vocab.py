"""The one vocabulary check (kdmt.vocab.check_vocabularies): models used together, and a teacher with its
data, must have the same source and target sentencepiece models."""

import pytest
import torch

from kdmt.checkpoint import Checkpoint, save_checkpoint
from kdmt.errors import KdmtError
from kdmt.model import Transformer, make_config
from kdmt.scoring import CheckpointScorer
from kdmt.translate import Translator
from kdmt.vocab import Vocab, check_vocabularies, train_vocab


def test_models_used_together_must_share_both_vocabularies(toy_data, tmp_path):
    vocab = Vocab.load(toy_data / "spm.model")
    (tmp_path / "text").write_text("a b c\nb c d\n")
    other = train_vocab(tmp_path / "other.model", tmp_path / "text", 8, model_type="word")
    check_vocabularies((vocab, vocab), (Vocab(vocab.proto), Vocab(vocab.proto)), "not raised")
    for found in ((vocab, other), (other, vocab)):
        with pytest.raises(KdmtError, match="^named$"):
            check_vocabularies((vocab, vocab), found, "named")
    torch.manual_seed(0)
    model = Transformer(make_config(len(vocab), len(vocab), "tiny"))
    ensemble = [Checkpoint(model, vocab, vocab), Checkpoint(model, vocab, other)]
    with pytest.raises(KdmtError, match="the models of an ensemble must share their vocabularies"):
        Translator(ensemble)
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path, checkpoint in zip(paths, ensemble):
        save_checkpoint(path, checkpoint)
    with pytest.raises(KdmtError, match="the models of an ensemble must share their vocabularies"):
        CheckpointScorer(paths, torch.device("cpu"))
    CheckpointScorer(paths[:1] * 2, torch.device("cpu"))
