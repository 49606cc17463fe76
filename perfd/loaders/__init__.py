"""Model loaders: how the model cache loads, runs and unloads each kind of model.

Importing this package is cheap: onnxruntime and numpy are imported only when an ONNX model
loads or runs, llama_cpp only when a GGUF model loads, importlib.metadata only when an unknown
loader name is looked up.
"""

from perfd.loaders.base import Loaded, Loader, LoaderError, ModelSpec
from perfd.loaders.registry import Registry

__all__ = ["Loaded", "Loader", "LoaderError", "ModelSpec", "Registry"]
