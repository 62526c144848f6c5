"""Page setup and navigation."""

from __future__ import annotations

import streamlit as st


def main():
    st.set_page_config(page_title="Attend & Rectify Explorer", page_icon=":material/center_focus_strong:", layout="wide")
    from app.pages import about, inspect_page

    pages = [
        st.Page(inspect_page.render, title="Inspect an image", icon=":material/image_search:", url_path="inspect", default=True),
        st.Page(about.render, title="How it works", icon=":material/menu_book:", url_path="about"),
    ]
    st.navigation(pages).run()
