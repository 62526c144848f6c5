"""Entry point: `streamlit run streamlit_app.py`."""

from app.main import main

main()
