"""Use cases, one module each, shared by the command line and the web app: inspect a photo,
apply a review action, run the library commands. They are the only place that joins ``core``
(the models) to ``db`` (the store)."""
