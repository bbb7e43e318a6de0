"""The bundled offline demo: the count-down task, the tiny model, and the pipeline run over them."""
