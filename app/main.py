"""Page setup and navigation."""

from __future__ import annotations

import logging

import streamlit as st


# Widget values kept when the user changes page (Streamlit drops a widget's value when its page is left):
# the sidebar's choices, the inspector's image source, data-set browser, per-image class choices and overlay
# display (also dropped when their tab is closed), and the lab's controls.
SHARED_WIDGETS = ("model_label", "device", "tta", "dataset_kind", "folder",
                  "source", "fit", "browse_class", "browse_outcome", "browse_pos", "attr_target", "contrib_classes",
                  "alpha", "cmap",
                  "lab_occlude", "lab_ox", "lab_oy", "lab_osize", "lab_dx", "lab_dy", "lab_scale", "lab_noise",
                  "lab_brightness", "lab_contrast", "lab_seed")
# Widgets of the inspector's tabs whose options depend on the model: recorded here, given back where they are
# drawn while the model still offers the value (app.state.restore_widget).
TAB_WIDGETS = ("hm_layer", "hm_head", "attr_methods", "attr_layer", "attr_nt")


def carry_shared_widgets():
    """Keep SHARED_WIDGETS' values across pages. Re-assigning a value makes it outlive its page; a copy in
    a plain key restores the values Streamlit drops outright, as it does when a button's callback switches
    page before any widget of that run is drawn."""
    from app.state import KEPT_WIDGETS

    kept = st.session_state.setdefault(KEPT_WIDGETS, {})
    kept.update({key: st.session_state[key] for key in TAB_WIDGETS if key in st.session_state})
    for key in SHARED_WIDGETS:
        if key not in st.session_state and key in kept:
            st.session_state[key] = kept[key]  # dropped outright
        if key in st.session_state:
            st.session_state[key] = kept[key] = st.session_state[key]  # re-assigned, it outlives its page


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
    carry_shared_widgets()
    page = st.navigation(list(pages.values()))
    try:
        page.run()
    except Exception as e:  # last resort: a message, never a traceback, and the session survives
        if type(e).__module__.startswith("streamlit"):  # rerun/stop requests are control flow
            raise
        logging.getLogger("attend_rectify").exception("unhandled error on page %s", page.title)
        st.error(f"Something went wrong ({type(e).__name__}: {e}). Your previous results are kept; try another "
                 f"input or reload the page.")
