"""The choices a LiteRT conversion takes, without torch: the TFLite backend declares its options with them
(at import, on a box that only runs artifacts) and the exporter checks its arguments against them."""

LAYOUTS = ("nchw", "nhwc")
DYNAMIC_MODES = ("auto", "off")
