"""slopewatch core: the library every entry point (CLI, web app, nightly job) builds on.

Foundation modules sit here (types, taxonomy, dataset reader, paths, errors, images, photos,
device, overlay, model registry, the two-stage pipeline); each job has its folder:

* ``stage1/``     the YOLO object detector;
* ``stage2/``     condition labelling: classifier, spatial facts, prompts, rationales, features,
                  the base LM, and ``backends/`` registered by name in ``stage2/registry.py``;
* ``library/``    the photo library: embeddings, the 2-D map, similar and text search;
* ``evaluation/`` metrics, detector/classifier/pipeline evaluation, MCQ, bench, dataset analysis.

Nothing in ``core`` imports ``app``, ``train`` or ``db`` (``tests/test_architecture.py``).
"""

__version__ = "0.1.0"
