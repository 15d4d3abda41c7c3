"""Dynamic int8 quantization of an ONNX export (onnxruntime), for CPUs with AVX512-VNNI / AVX-VNNI."""

from __future__ import annotations

from pathlib import Path


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the MatMul weights, per output channel, FFN down-projections excepted.

    Measured on MiniLM (cosine to the fp32 vectors over SciFact chunks): onnxruntime's default (every op,
    per tensor) 0.93; every MatMul per channel 0.994 (SciFact nDCG@10 -0.0066); with the FFN
    down-projections (whose inputs, after GELU, have the widest range) left in fp32, 0.997.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=down_projections(source),
        extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT, for tensors shape inference misses
    )


def down_projections(path: Path) -> list[str]:
    """Names of the MatMul nodes whose weight maps a wider space onto a narrower one (the FFN outputs)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    out = []
    for node in graph.node:
        shape = shapes.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if shape is not None and len(shape) == 2 and shape[0] > shape[1]:
            out.append(node.name)
    return out
