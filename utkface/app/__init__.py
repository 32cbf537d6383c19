"""The web app: the Streamlit page and its testable logic."""

MODEL_ENV = "UTKFACE_APP_MODEL"  # the model URI `utkface app` passes to the page
