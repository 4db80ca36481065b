"""imgcls: train an image classifier from scratch on a folder of photos, then use it.

The package is a one-way hallway (see README "Layout"): scan -> split -> cache -> loader ->
augment -> model -> train, and evaluate / predict / export / serve that need only a
checkpoint. Importing the package imports nothing heavy; each command imports what it uses.

The Python API (api.py): imgcls.scan_folder, imgcls.fit -> Run, imgcls.load -> Model
(.predict, .probabilities, .evaluate, .export, .class_names), imgcls.show_batch and figures.
"""

from imgcls.version import __version__

__all__ = ["scan_folder", "fit", "load", "show_batch", "Run", "Model", "UserError",
           "confusion_figure", "top_losses_figure", "__version__"]


def __getattr__(name: str):
    # The API is imported on first use: `import imgcls` stays free of torch, and `imgcls
    # scan` (which imports the package) still never pays for it.
    if name in __all__ and name != "__version__":
        if name == "UserError":
            from imgcls.errors import UserError

            return UserError
        from imgcls import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgcls' has no attribute {name!r}")
