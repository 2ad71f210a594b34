"""Small built-in models with real data: the demo's default and the tests' workhorses."""

from modelport.examples.digits import digits_calibration, digits_cnn, digits_data, digits_evaluation
from modelport.examples.digits_transformer import digits_transformer

__all__ = ["digits_calibration", "digits_cnn", "digits_data", "digits_evaluation", "digits_transformer"]
