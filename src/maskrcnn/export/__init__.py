"""Deployment: export a model to ONNX and run the export behind the ``Predictor`` API.

* :mod:`maskrcnn.export.graph`: :class:`~maskrcnn.export.graph.ExportGraph`, the batched,
  traceable detection graph (any image count and sizes; resize inside; flat outputs);
* :mod:`maskrcnn.export.onnx`: :func:`~maskrcnn.export.onnx.export_onnx` (``model.onnx`` + sidecar)
  and :func:`~maskrcnn.export.onnx.read_sidecar`;
* :mod:`maskrcnn.export.tflite`: the dense parts as a ``.tflite`` (fixed size) and
  :class:`~maskrcnn.export.tflite.SplitGraph`, the graph's glue around them;
* :mod:`maskrcnn.export.runtime`: :class:`~maskrcnn.export.runtime.OnnxPredictor` (ONNX Runtime),
  ``OpenVinoPredictor`` and ``TFLitePredictor`` (LiteRT), what ``maskrcnn.load("model.onnx")``
  (``.xml``, ``.tflite``) returns.

``onnx`` and ``onnxruntime`` (the ``export`` extra), ``openvino``, ``litert_torch`` and
``ai_edge_litert`` (the ``tflite`` extra) are imported only when used.
"""
