"""Deployment: export a model to ONNX and run the export behind the ``Predictor`` API.

* :mod:`maskrcnn.export.graph`: :class:`~maskrcnn.export.graph.ExportGraph`, the batched,
  traceable detection graph (any image count and sizes; resize inside; flat outputs);
* :mod:`maskrcnn.export.onnx`: :func:`~maskrcnn.export.onnx.export_onnx` (``model.onnx`` + sidecar)
  and :func:`~maskrcnn.export.onnx.read_sidecar`;
* :mod:`maskrcnn.export.runtime`: :class:`~maskrcnn.export.runtime.OnnxPredictor` (ONNX Runtime),
  what ``maskrcnn.load("model.onnx")`` returns.

``onnx`` and ``onnxruntime`` (the ``export`` extra) are imported only when used.
"""
