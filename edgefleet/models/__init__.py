"""ONNX models as ModelPack artifacts.

``signature``, ``probe`` and ``artifact`` use the standard library only (the device
agent reads them); ``pack`` builds artifacts with onnx and onnxruntime, imported when
it is called.
"""
