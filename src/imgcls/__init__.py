"""imgcls: train an image classifier from scratch on a folder of photos, then use it.

The package is a one-way hallway (see README "Layout"): scan -> split -> cache -> loader ->
augment -> model -> train, and evaluate / predict / export / serve that need only a
checkpoint. Importing the package imports nothing heavy; each command imports what it uses.
"""

__version__ = "0.1.0"
