import copy
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def _tiny_loaded():
    from seal_lm.models import load_model

    return load_model("tiny-random", device="cpu", dtype=torch.float32, seed=0)


@pytest.fixture
def tiny(_tiny_loaded):
    """A fresh copy of the 2-layer random Llama (tests may wrap/modify it freely)."""
    from seal_lm.models import LoadedModel

    return LoadedModel(model=copy.deepcopy(_tiny_loaded.model), tokenizer=_tiny_loaded.tokenizer, name="tiny-random")


@pytest.fixture(scope="session")
def embedded():
    from seal_lm.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu", dtype=torch.float32)
