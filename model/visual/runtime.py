"""ONNX Runtime sessions on the CPU, set up one way for every network of the visual tokenizer (the face
detector and, where bf16 is not native, the classifier)."""

from __future__ import annotations


def cpu_session(model: bytes, threads: int | None = None):
    """An onnxruntime InferenceSession for `model` (ONNX bytes) on the CPU with `threads` intra-op threads
    (default: torch's thread count, the project's one thread setting), no inter-op parallelism, and no
    busy-waiting between calls: torch work (the classifier, MiniLM) needs the same cores right after."""
    import onnxruntime as ort

    if threads is None:
        import torch

        threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about the graph go to our log, not stderr
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
