"""Small built-in models with real data: the demo's default and the tests' workhorses."""

from modelport.examples.digits import digits_calibration, digits_cnn, digits_data, digits_evaluation

__all__ = ["digits_calibration", "digits_cnn", "digits_data", "digits_evaluation"]
