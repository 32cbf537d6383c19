"""The Streamlit page of `utkface app` (started by `utkface.cli.app`): estimates of age and
gender for each face in a photo. The logic lives in `utkface.app.logic`; this file only draws.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from utkface.app import logic
from utkface.data.imaging import ImageError
from utkface.inference.answering import encode_png
from utkface.inference.client import (
    AnsweringModel,
    InputLimits,
    PredictError,
    decode_rgb,
    synthetic_warning,
)
from utkface.mlops.tracking import StoreMovedError
from utkface.params import ParamsError

RESPONSIBLE_USE = (
    "Estimates of apparent age and binary gender from appearance: for research and teaching "
    "only, never for decisions about a person. Errors differ across age, gender and race groups; "
    "children's gender is near chance. UTKFace-trained models: non-commercial research only. "
    "Pretrained face networks: dlib-models (public domain, CC0 1.0)."
)


@st.cache_resource(show_spinner="Loading the model...")
def _load(uri: str) -> tuple[AnsweringModel, InputLimits]:
    return logic.load_model(uri)


@st.cache_data(show_spinner=False)
def _samples() -> dict[str, np.ndarray]:
    return logic.sample_images()


def _model_card(card: logic.ModelCard) -> None:
    st.sidebar.header("Model")
    if card.version is None:
        st.sidebar.markdown(f"`{card.uri}` (not a registered version)")
        return
    alias = f", alias {card.alias}" if card.alias else ""
    st.sidebar.markdown(f"**{card.name}** version **{card.version}**{alias}")
    st.sidebar.caption(f"run {card.run_id}  \ndata version {card.data_version}")
    mae, accuracy = st.sidebar.columns(2)
    mae.metric("test age MAE", "n/a" if card.age_mae is None else f"{card.age_mae:.2f} y")
    accuracy.metric(
        "gender accuracy", "n/a" if card.gender_accuracy is None else f"{card.gender_accuracy:.3f}"
    )
    with st.sidebar.expander("Intended use and limits", expanded=True):
        st.markdown(card.description or "_no description registered_")
        if card.version_description:
            st.caption(card.version_description)


def _image(limits: InputLimits) -> tuple[str, np.ndarray, bytes] | None:
    """The image picked or uploaded: its name, upright pixels and bytes; None (after saying
    why) when there is none to use."""
    source = st.radio("Image", ["Upload a photo", "Try a sample"], horizontal=True)
    if source == "Try a sample":
        samples = _samples()
        name = st.selectbox("Sample", list(samples))
        return name, samples[name], encode_png(samples[name])
    megabytes, limit = logic.upload_limit(limits)
    st.caption(limit)
    upload = st.file_uploader(
        "A JPEG or PNG photo", type=["jpg", "jpeg", "png"], max_upload_size=megabytes
    )
    if upload is None:
        st.info("Upload a photo, or try a sample image.")
        return None
    try:
        return upload.name, decode_rgb(upload.getvalue(), limits), upload.getvalue()
    except ImageError as error:
        st.error(f"Cannot use {upload.name}: {error}. Upload a JPEG or PNG photo.")
        return None


def main() -> None:
    st.set_page_config(page_title="Age and gender estimate", layout="wide")
    st.title("Age and gender from a face")
    st.caption(RESPONSIBLE_USE)
    try:
        card = logic.model_card(logic.default_model_uri())
        model, limits = _load(card.uri)
    except (PredictError, ParamsError, StoreMovedError) as error:
        st.error(str(error))
        st.stop()
    _model_card(card)
    if warning := synthetic_warning(limits):
        st.warning(f"Demo model: {warning}.")
    picked = _image(limits)
    if picked is None:
        st.stop()
    name, image, data = picked
    predictions = logic.predict_faces(model, data)
    whole = False
    if not predictions:
        st.warning(
            "No face found (the detector looks for frontal faces). "
            "The model can still look at the centre of the whole image."
        )
        if not st.checkbox("Predict on the whole image"):
            st.image(image, caption=name)
            st.stop()
        predictions, whole = [logic.predict_whole(model, data)], True
    st.image(logic.annotate(image, predictions), caption=name)
    for prediction in predictions:
        where = "whole image" if whole or prediction.face is None else f"face {prediction.face}"
        if prediction.error:
            st.error(f"{where}: {prediction.error}")
        else:
            st.markdown(f"**{where}**: {logic.label(prediction)}")


if __name__ == "__main__":
    main()
