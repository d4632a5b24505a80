"""OpenVINO: running an encnet model with OpenVINO's CPU runtime (extra ``encnet[openvino]``).

``load_openvino(path, device)`` opens an OpenVINO IR (``model.xml`` with its weights ``model.bin``
beside it, as ``encnet export --format openvino`` writes) or an ONNX export (OpenVINO reads ONNX
directly) and returns the same ``LoadedModel`` as every other format: outputs "out" (and "se") mapped
by name, dynamic batch/height/width kept, the encnet metadata read from the IR's ``rt_info``
(key ``encnet.json``, the same JSON as an ONNX file's ``metadata_props``).

The model is compiled for OpenVINO's "CPU" device, with float32 inference precision (the CPU plugin
would otherwise pick bfloat16 on CPUs that have it) and torch's thread count. A CUDA ``device`` is not
refused: OpenVINO runs on the CPU here, a warning says so once, and the outputs are moved to
``device`` so that the rest of inference runs there as it would for any other format.

Reading a model never runs code from it: an IR is an XML graph of OpenVINO's built-in operations plus
raw weight bytes (custom operations would need extensions, which are never loaded here), and an ONNX
file is checked first for external data outside its folder (``check_onnx_file``).
"""

from encnet_core.weights.model_files import (
    OPENVINO_DEVICE,
    load_openvino,
    read_openvino_metadata,
    weights_file,
)

__all__ = ["load_openvino", "read_openvino_metadata", "weights_file", "OPENVINO_DEVICE"]
