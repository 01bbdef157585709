"""Compression of a finished run's fine-tuned classifier: int8 quantization, ONNX export, and
what each variant costs in size and test-split quality (`fedssl compress RUN_DIR`,
docs/compression.md). One job per module; compress_command.py ties them together."""
