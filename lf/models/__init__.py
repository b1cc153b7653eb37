"""Models: names that resolve to files shipped by Python packages, local model files, ONNX builds."""
