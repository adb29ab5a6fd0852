"""Errors of the earnings model. Input errors carry a ``kind`` the service maps to a problem type."""

from __future__ import annotations


class SequenceValidationError(ValueError):
    """Input that must not reach the model. ``kind`` names which check failed."""

    kind = "invalid_input"

    def __init__(self, message: str):
        super().__init__(f"{self.kind}: {message}")


class InsufficientHistoryError(SequenceValidationError):
    """Fewer hours than the model's input window plus lag history needs."""

    kind = "insufficient_history"


class MissingHoursError(SequenceValidationError):
    """The hourly series has gaps where the model needs values, duplicates, or is not hourly."""

    kind = "missing_hours"


class NonFiniteValuesError(SequenceValidationError):
    """A NaN or infinite value where a finite one is needed."""

    kind = "non_finite_values"


class FeatureMismatchError(SequenceValidationError):
    """The input lacks the columns the model reads (``ts``, ``earnings_usd``; ``allocation`` optional)."""

    kind = "feature_mismatch"


class AllocationPathError(SequenceValidationError):
    """A future allocation path that is not ``horizon`` finite shares in [0, 1]."""

    kind = "invalid_allocation_path"


class ModelNotTrainedError(RuntimeError):
    """The model has no fitted base/network yet."""


class ModelLoadError(RuntimeError):
    """A saved model is missing a part, or its parts disagree. The message names the file."""
