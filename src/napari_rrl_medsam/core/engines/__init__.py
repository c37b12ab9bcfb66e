"""Training engines: generators of `Progress` events shared by the CLI, the api and the napari widgets."""
