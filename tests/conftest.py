import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ar_core import ModelConfig, build_model  # noqa: E402


def pytest_configure(config):
    """Tiny models: one thread is fastest and keeps results bit-stable. Set here, not at import, so a
    script that borrows a helper from this file keeps its own thread count."""
    torch.set_num_threads(1)


# The data-set page as its own app, with the inspector registered so "open in the inspector" works.
DATASET_APP = (  # the data-set page first, with what app.main does around every page
    "import streamlit as st\n"
    "from app.main import carry_shared_widgets\n"
    "from app.pages import dataset_page, inspect_page\n"
    "carry_shared_widgets()\n"
    "st.session_state['_pages'] = {'inspect': st.Page(inspect_page.render, url_path='inspect'),\n"
    "                              'dataset': st.Page(dataset_page.render, url_path='dataset', default=True)}\n"
    "st.navigation(list(st.session_state['_pages'].values()), position='hidden').run()\n")


@pytest.fixture
def tiny_config():
    """WRN-10-1 with AD=3, K=2: small enough for exact re-computation in milliseconds."""
    return ModelConfig(num_classes=5, depth=10, width=1, attention_depth=3, attention_width=2)


def randomize_bn(model, seed=0):
    """Give every BatchNorm non-trivial statistics so eval-mode tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return randomize_bn(build_model(tiny_config)).eval()


def open_tab(at, label: str):
    """Open the inspector's tab ``label`` and rerun: only the open tab is built, as in the browser."""
    from app.pages.inspect_page import TABS
    from app.share import TAB_KEY

    assert label in TABS, f"no tab {label!r}"  # a misspelt tab would leave the last one open, silently
    at.session_state[TAB_KEY] = label
    return at.run()
