"""Training throughput: target tokens per second of kdmt's training step, per model preset.

Runs real training steps (forward, backward, Adam) on batches of the prepared corpus and reports the
median over the timed steps, with the hardware named. Example:

    python scripts/bench_train.py --data work/demo/data --presets tiny small base --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdmt.data import load_corpus, load_prepared, read_parallel
from kdmt.device import describe_device, resolve_device
from kdmt.model import Transformer, make_config
from kdmt.train import TrainConfig, Trainer, ValidSet
from kdmt.vocab import Vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a directory written by kdmt prepare")
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    device = resolve_device(args.device)
    prepared = load_prepared(args.data)
    vocab = Vocab.load(prepared.src_vocab_path(args.data))
    train = load_corpus(args.data / "train.src", args.data / "train.tgt", vocab, vocab, args.data / "train")
    valid = ValidSet(train, *read_parallel(args.data / "valid.src", args.data / "valid.tgt"))
    results = []
    for preset in args.presets:
        torch.manual_seed(0)
        model = Transformer(make_config(len(vocab), len(vocab), preset))
        config = TrainConfig(max_tokens=args.max_tokens, max_steps=args.steps + 3, warmup=100)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(model, vocab, vocab, train, valid, Path(tmp), config, device)
            batches = trainer.data.batches(trainer.state)
            rates = []
            for i in range(args.steps + 3):
                batch = next(batches)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                trainer.train_step([batch])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= 3:
                    rates.append(batch.ntokens / (time.perf_counter() - start))
        row = {
            "preset": preset,
            "parameters": model.num_parameters(),
            "max_tokens": args.max_tokens,
            "median_target_tokens_per_s": round(statistics.median(rates)),
            "steps": args.steps,
            "device": describe_device(device),
            "torch": torch.__version__,
        }
        results.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
