"""Matterport's ``mrcnn`` package on this project's engine: change the import, keep the script.

::

    # before                                   # after
    from mrcnn import config, utils            from maskrcnn.compat.mrcnn import config, utils
    import mrcnn.model as modellib             from maskrcnn.compat.mrcnn import model as modellib
    from mrcnn import visualize                from maskrcnn.compat.mrcnn import visualize

Modules: :mod:`.config` (``Config``), :mod:`.utils` (``Dataset``, ``compute_ap`` ...),
:mod:`.model` (``MaskRCNN``) and :mod:`.visualize` (``display_instances`` ...). Every call
delegates to this project's code (``Config.from_matterport``, ``maskrcnn.data.Dataset``,
``maskrcnn.engine.train``, ``Predictor``, ``Detections.to_matterport``, ``evaluation.voc``);
what has no equivalent raises or prints one line saying so (README, "Coming from Matterport").
"""
