"""The student as an ONNX graph: what deploy/export.py writes for QGIS and what eval/backends.py runs with ONNX Runtime.

One function, `to_onnx`, turns a module (B, 3, H, W) -> (B, C, H, W) into an ONNX model with a dynamic batch.
The file is opset 17 and IR version 8, so that every onnxruntime QGIS's Deepness plugin installs (1.12.1 to
1.17.0) runs it; the ONNX Runtime of requirements.txt runs it too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from util.errors import UserError

if TYPE_CHECKING:
    import onnx

# Deepness' python_requirements/requirements.txt allows onnxruntime 1.12.1 to 1.17.0 (its installer takes the
# newest there; one already importable is used whatever its version); onnxruntime 1.12 runs opsets up to 17 and IR
# versions up to 8, and refuses the exporter's IR 10 outright. The exporter translates at opset 18; the file is
# converted down to 17 and marked IR 8, the IR of ONNX 1.12, which brought opset 17: the graph uses nothing newer.
OPSET = 17
IR_VERSION = 8
EXPORT_OPSET = 18
# One ONNX file is a protobuf message, which cannot exceed 2 GiB; the weights are most of it.
MAX_WEIGHT_BYTES = 2**31 - 2**26


def exporter_missing() -> str | None:
    """Why this PyTorch cannot export the graph (its torch.export-based ONNX exporter came with 2.6), or None."""
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if version < (2, 6):
        return f"PyTorch 2.6 or newer (its torch.export-based ONNX exporter); this is {torch.__version__}"
    return None


def require_exporter(command: str) -> None:
    """The export's packages: torch.onnx's torch.export-based exporter (PyTorch 2.6 or newer), onnx, ONNX Script and
    ONNX Runtime; a one-line error naming what `command` is missing."""
    missing = exporter_missing()
    if missing:
        raise UserError(f"{command} needs {missing}")
    for package in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            raise UserError(f"{command} needs the package {package}: pip install -r requirements.txt") from None


def weight_bytes(model: nn.Module) -> int:
    """The bytes of `model`'s parameters: what an ONNX file of it holds, nearly."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """Keep the exporter's progress lines and notes off the terminal: the commands print their own summary."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def to_onnx(model: nn.Module, height: int, width: int, input_name: str, output_name: str) -> onnx.ModelProto:
    """`model` (B, 3, height, width) -> (B, C, height, width) as an ONNX model of opset OPSET with a dynamic batch.

    torch.onnx's dynamo exporter (torch.export, then ONNX Script; its graph optimiser on) is the path that works:
    TorchScript tracing cannot follow the position-embedding resize. The example batch is 2, as a batch of 1
    would be taken for a constant.
    """
    import onnx

    example = torch.rand(2, 3, height, width)
    batch = torch.export.Dim("batch")
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=EXPORT_OPSET, external_data=False,
                                    input_names=[input_name], output_names=[output_name],
                                    dynamic_shapes=({0: batch},), verbose=False)
    assert program is not None  # dynamo=True without a file name returns the program
    proto = onnx.version_converter.convert_version(program.model_proto, OPSET)
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    return proto
