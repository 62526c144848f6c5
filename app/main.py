"""Page setup and navigation."""

from __future__ import annotations

import logging

import streamlit as st


SHARED_WIDGETS = ("model_label", "device", "tta", "dataset_kind", "folder")


def main():
    st.set_page_config(page_title="Attend & Rectify Explorer", page_icon=":material/center_focus_strong:", layout="wide")
    from app.pages import about, dataset_page, inspect_page, lab_page

    pages = {
        "inspect": st.Page(inspect_page.render, title="Inspect an image", icon=":material/image_search:",
                           url_path="inspect", default=True),
        "dataset": st.Page(dataset_page.render, title="Whole data set", icon=":material/dataset:", url_path="dataset"),
        "lab": st.Page(lab_page.render, title="Perturbation lab", icon=":material/science:", url_path="lab"),
        "about": st.Page(about.render, title="How it works", icon=":material/menu_book:", url_path="about"),
    }
    st.session_state["_pages"] = pages  # for st.switch_page from inside a page
    for key in SHARED_WIDGETS:  # keep the sidebar's choices when the user changes page
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    page = st.navigation(list(pages.values()))
    try:
        page.run()
    except Exception as e:  # last resort: a message, never a traceback, and the session survives
        if type(e).__module__.startswith("streamlit"):  # rerun/stop requests are control flow
            raise
        logging.getLogger("attend_rectify").exception("unhandled error on page %s", page.title)
        st.error(f"Something went wrong ({type(e).__name__}: {e}). Your previous results are kept; try another "
                 f"input or reload the page.")
