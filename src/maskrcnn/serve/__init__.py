"""``maskrcnn serve``: an HTTP service with a web page around one model.

* :mod:`maskrcnn.serve.app`: the FastAPI app (endpoints, errors, limits, API key) and ``serve()``;
* :mod:`maskrcnn.serve.batching`: dynamic batching on one worker thread that owns the model;
* :mod:`maskrcnn.serve.metrics`: the Prometheus metrics;
* ``page/``: the web page at ``/`` (plain HTML and JavaScript).

Needs the ``serve`` extra: ``pip install 'maskrcnn[serve]'``.
"""
