"""Files of the TensorFlow Object Detection API, read without TensorFlow.

* :mod:`.textformat`: protobuf text format (``.pbtxt``, ``pipeline.config``) as a tree;
* :mod:`.labelmap`: ``label_map.pbtxt`` -> class ids and names;
* :mod:`.records`: the TFRecord framing and its CRC-32C checksums;
* :mod:`.example`: ``tf.train.Example`` via ``protobuf`` (the ``tfod`` extra);
* :mod:`.pipeline`: ``pipeline.config`` -> a :class:`~maskrcnn.config.Config` and what has no equivalent.

The dataset format built on them is :class:`maskrcnn.data.formats.TfRecordDataset` (``tfrecord``).
"""
