import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from toy import prepare_toy, train_toy  # noqa: E402

from kdmt.run_dir import LAST  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# pytest -n N (pytest-xdist): N processes share the cores, each with its share of torch's threads
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))
MULTI30K = REPO / "data" / "multi30k"


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    return prepare_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def toy_model(toy_data, tmp_path_factory) -> Path:
    """A tiny model trained to reverse letter sequences; the path of its last checkpoint."""
    out = tmp_path_factory.mktemp("toy_model")
    train_toy(toy_data, out)
    return out / LAST
