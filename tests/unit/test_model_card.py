"""What a registered version's card says (`utkface.mlops.registry.ModelCardFacts`)."""

from __future__ import annotations

from utkface.mlops.registry import BACKBONE_NOTICE, ModelCardFacts

BANDS = {
    "groups": {
        "0-2": {"n": 40, "age_mae": 1.2, "gender_accuracy": 0.55},
        "3-9": {"n": 0, "small_sample": True},
        "20-29": {"n": 300, "age_mae": 4.5, "gender_accuracy": 0.97},
    }
}


def test_a_pretrained_card_names_the_family_data_licence_and_bands() -> None:
    card = ModelCardFacts("pretrained", "real images", 4786, age_bands=BANDS)
    text = card.describe()
    assert "Model family: pretrained" in text
    assert "Trained on 4786 images: real images." in text
    assert BACKBONE_NOTICE in text and "CC0 1.0" in text
    assert "0-2: 1.20 years, gender 0.550 (n=40)" in text
    assert "20-29: 4.50 years, gender 0.970 (n=300)" in text
    assert "3-9" not in text  # empty bands are left out
    assert card.tags() == {
        "family": "pretrained",
        "trained_on": "real images",
        "training_images": "4786",
    }


def test_a_synthetic_scratch_card_warns_and_has_no_backbone_notice() -> None:
    text = ModelCardFacts("scratch", "synthetic demo set", 840, synthetic=True).describe()
    assert "a demo, wrong on real faces" in text
    assert BACKBONE_NOTICE not in text
