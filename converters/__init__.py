"""Converters: published checkpoints (hub SavedModel, original npz) -> native vit_hub weights."""

from vit_hub.weights import WeightsError


class ConversionError(WeightsError):
    """A checkpoint cannot be read, or does not fit the model it is converted into."""
