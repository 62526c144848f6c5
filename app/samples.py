"""No dead ends: one click gives a sample photo, or a random image of the chosen data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

SAMPLE_NAME = "grace_hopper.jpg (sample photo shipped with matplotlib)"


def sample_path() -> Path | None:
    """A photo that ships with a dependency (matplotlib's sample data), or None where it is absent."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return path if path.is_file() else None


def _use_sample():
    st.session_state.update({"source": "Upload", "use_sample": True})


def _random_dataset_image():
    st.session_state.update({"source": "Dataset", "browse_class": None, "browse_outcome": "all",
                             "_random_pick": True})


def sample_images() -> list[tuple[str, bytes]]:
    """The sample photo as an upload (name, bytes) while it is chosen, else nothing."""
    path = sample_path()
    if not st.session_state.get("use_sample") or path is None:
        return []
    return [(SAMPLE_NAME, path.read_bytes())]


def drop_sample():
    """A real upload replaces the sample."""
    st.session_state["use_sample"] = False


def start_buttons(page: str = "inspect"):
    """Two ways to start without an image of one's own."""
    c1, c2 = st.columns(2)
    if sample_path() is not None:
        c1.button("Try a sample photo", key=f"{page}_sample", on_click=_use_sample, icon=":material/photo:")
    c2.button("Random image of the data set", key=f"{page}_random", on_click=_random_dataset_image,
              icon=":material/shuffle:")


def consume_random_pick(n: int):
    """After *Random image of the data set*: a random position among the ``n`` matching images."""
    if st.session_state.pop("_random_pick", False) and n > 0:
        st.session_state["browse_pos"] = int(np.random.default_rng().integers(n))


def start_on_inspector():
    """From another page: open the inspector on the sample photo (or, without one, a random data-set image)."""
    (_use_sample if sample_path() is not None else _random_dataset_image)()
    st.switch_page(st.session_state["_pages"]["inspect"])
