"""Dog images: renderers that turn a Gaussian vector into a portrait."""
