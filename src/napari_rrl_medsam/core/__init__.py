"""The core: volumes, geometry, I/O, tasks, metrics, models and engines. No Qt, no napari."""
