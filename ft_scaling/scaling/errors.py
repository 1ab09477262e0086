"""The one error type of the fitter: bad input, reported with a message that says what to fix."""


class ScalingInputError(ValueError):
    """Input the fitter cannot use: missing columns, NaNs, non-positive values, too few points."""
