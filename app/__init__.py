"""The Streamlit explorer. Pages lay out; ar_core computes; app.figures draws."""
