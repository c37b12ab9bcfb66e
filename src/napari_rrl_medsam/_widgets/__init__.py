"""napari dock widgets: thin Qt faces over the api's training engines and inference.

Each widget drives an engine generator from a napari `thread_worker` (co-training: the engine itself runs in
a child process, see `runner`) and only touches layers and widgets from the main thread (through the
worker's signals). Modules here import Qt and napari (except `jobs`, which a child process imports); the
package itself is imported only when napari opens a widget, so `import napari_rrl_medsam` stays light.
"""
