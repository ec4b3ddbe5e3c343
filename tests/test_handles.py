"""`get_entry` resolves every form of handle users have in their code (names, kagglehub
handles, Kaggle and TF-Hub URLs) to a catalogue entry, and refuses everything else with
one CatalogueError that says what is close: nothing typed ever reaches a path."""

import re

import pytest

import vit_hub
from tests.conftest import TINY_HANDLE, TINY_NAME
from vit_hub.errors import CatalogueError

KAGGLE = "www.kaggle.com/models/spsayakpaul/vision-transformer"
HANDLE = "spsayakpaul/vision-transformer/tensorFlow2/vit-b16-fe"


@pytest.mark.parametrize("form", [
    "vit_b16_fe",
    f"{HANDLE}/1",
    "spsayakpaul/vision-transformer/TensorFlow2/vit-b16-fe/1",
    "spsayakpaul/vision-transformer/tensorflow2/vit-b16-fe/1",
    HANDLE,  # unpinned: the pinned version
    f"https://{KAGGLE}/TensorFlow2/vit-b16-fe/1",
    f"https://{KAGGLE}/TensorFlow2/vit-b16-fe/1/",
    f"http://{KAGGLE}/tensorflow2/vit-b16-fe",
    "https://kaggle.com/models/spsayakpaul/vision-transformer/TensorFlow2/vit-b16-fe/",
    f"https://{KAGGLE}/frameworks/TensorFlow2/variations/vit-b16-fe/versions/1",
    f"http://{KAGGLE}/frameworks/tensorFlow2/variations/vit-b16-fe/",
    "https://tfhub.dev/sayakpaul/vit_b16_fe/1",
    "https://tfhub.dev/sayakpaul/vit_b16_fe/1?tf-hub-format=compressed",
    "http://www.tfhub.dev/sayakpaul/vit_b16_fe",
])
def test_forms_resolve_to_the_entry(form):
    assert vit_hub.get_entry(form).name == "vit_b16_fe"


@pytest.mark.parametrize("form", [
    "https://tfhub.dev/sayakpaul/vit_r26_s32_lightaug_classification/1",
    f"https://{KAGGLE}/frameworks/TensorFlow2/variations/"
    "vit-r26-s32-lightaug-classification/versions/1",
    "spsayakpaul/vision-transformer/tensorFlow2/vit-r26-s32-lightaug-classification",
])
def test_hybrid_forms_resolve(form):
    assert vit_hub.get_entry(form).name == "vit_r26_s32_lightaug_classification"


def test_registered_model_resolves_by_its_handle():
    assert vit_hub.get_entry("spsayakpaul/vision-transformer/TensorFlow2/vit-tiny8-fe").name \
        == TINY_NAME
    assert vit_hub.get_entry(TINY_HANDLE).name == TINY_NAME
    assert vit_hub.get_entry(f"https://{KAGGLE}/TensorFlow2/vit-tiny8-fe/1").name == TINY_NAME


def test_registered_model_has_no_tfhub_url():
    with pytest.raises(CatalogueError, match=r"tfhub\.dev/sayakpaul has no 'vit_tiny8_fe'"):
        vit_hub.get_entry("https://tfhub.dev/sayakpaul/vit_tiny8_fe/1")


@pytest.mark.parametrize("form", [f"{HANDLE}/2", f"https://{KAGGLE}/TensorFlow2/vit-b16-fe/2",
                                  "https://tfhub.dev/sayakpaul/vit_b16_fe/2"])
def test_other_version_names_the_pinned_one(form):
    with pytest.raises(CatalogueError, match=(
            r"asks for version 2 of vit_b16_fe, but vit_hub pins version 1 "
            r"\(spsayakpaul/vision-transformer/tensorFlow2/vit-b16-fe/1\): only that version "
            r"is converted and verified")):
        vit_hub.get_entry(form)


def test_unknown_variation_suggests_the_close_one():
    with pytest.raises(CatalogueError, match=(
            r"^Unknown variation 'vit-b17-fe' of spsayakpaul/vision-transformer .*"
            r"Did you mean 'vit-b16-fe'.*Accepted forms: a model name")):
        vit_hub.get_entry("spsayakpaul/vision-transformer/tensorFlow2/vit-b17-fe/1")


def test_unknown_tfhub_name_suggests_the_close_one():
    with pytest.raises(CatalogueError,
                       match=r"has no 'vit_b17_fe' here\. Did you mean 'vit_b16_fe'"):
        vit_hub.get_entry("https://tfhub.dev/sayakpaul/vit_b17_fe/1")


@pytest.mark.parametrize("form", [
    "google/vision-transformer/tensorFlow2/vit-b16-fe/1",
    "https://www.kaggle.com/models/google/vit/TensorFlow2/vit-b16-fe",
])
def test_other_owner_is_refused(form):
    with pytest.raises(CatalogueError, match=(
            rf"^{re.escape(repr(form))} is not in the vit_hub catalogue: its models are "
            r"published as spsayakpaul/vision-transformer[^.]*\. Did you mean "
            r"'spsayakpaul/vision-transformer/tensorFlow2/vit-b16-fe/1'")):
        vit_hub.get_entry(form)


def test_other_framework_is_refused():
    with pytest.raises(CatalogueError,
                       match=r"converts the 'tensorFlow2' framework .*not 'pyTorch'"):
        vit_hub.get_entry("spsayakpaul/vision-transformer/pyTorch/vit-b16-fe/1")


def test_other_tfhub_model_is_refused():
    with pytest.raises(CatalogueError, match=(
            r"^'https://tfhub\.dev/google/imagenet/resnet_v2_50/feature_vector/5' is not a "
            r"Kaggle or TF-Hub URL of a vit_hub model .*tfhub\.dev/sayakpaul/<name>.*"
            r"Accepted forms:")):
        vit_hub.get_entry("https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5")


@pytest.mark.parametrize("form", [
    "https://www.kaggle.com/models/spsayakpaul/vision-transformer/TensorFlow2/..%2F..%2Fetc/1",
    "https://www.kaggle.com/models/spsayakpaul/vision-transformer/TensorFlow2/../vit-b16-fe/1",
    "https://user@www.kaggle.com/models/spsayakpaul/vision-transformer/TensorFlow2/vit-b16-fe",
    "ftp://www.kaggle.com/models/spsayakpaul/vision-transformer/TensorFlow2/vit-b16-fe",
    "https://tfhub.dev/sayakpaul/vit_b16_fe/1?tf-hub-format=../../x",
    "https://tfhub.dev/sayakpaul/../vit_b16_fe/1",
])
def test_malformed_urls_are_refused(form):
    with pytest.raises(CatalogueError, match=(
            rf"^{re.escape(repr(form))} is not a Kaggle or TF-Hub URL of a vit_hub model")):
        vit_hub.get_entry(form)


@pytest.mark.parametrize("form", ["spsayakpaul/vision-transformer/tensorFlow2/../1",
                                  "spsayakpaul/vision-transformer/tensorFlow2/vit-b16-fe/1/..",
                                  f"{HANDLE}/1 ", "/etc/passwd"])
def test_malformed_handles_are_refused(form):
    with pytest.raises(CatalogueError, match=(
            rf"^{re.escape(repr(form))} is not a model name: names are lower-case letters, "
            r".*Accepted forms: a model name \('vit_b16_fe'\), its kagglehub handle")):
        vit_hub.get_entry(form)


@pytest.mark.parametrize("value", [3, None, b"vit_b16_fe", ["vit_b16_fe"]])
def test_non_strings_are_refused(value):
    with pytest.raises(CatalogueError, match=(
            rf"^{re.escape(repr(value))} is not a model name or handle: expected a string\. "
            r"Accepted forms:")):
        vit_hub.get_entry(value)


def test_plain_name_errors_keep_their_wording():
    with pytest.raises(CatalogueError, match=(
            r"^Unknown pretrained model 'vit_b32_fee'\. Did you mean 'vit_b32_fe'")):
        vit_hub.get_entry("vit_b32_fee")
    with pytest.raises(CatalogueError, match=(
            r"^'\.\./vit_tiny8_fe' is not a model name: .*\(no '/', '\\' or '\.\.'\)\. "
            r"Did you mean 'vit_tiny8_fe'")):
        vit_hub.get_entry(f"../{TINY_NAME}")
