import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from toy import prepare_toy, train_toy  # noqa: E402

from kdmt.run_dir import LAST  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
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
