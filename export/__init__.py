"""Desktop → edge: ONNX export with parity checks, int8 quantization, bundle writing."""
