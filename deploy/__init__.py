"""Deployment: maps of scenes for a GIS (predict.py, with inputs.py, scenes.py, maps.py) and the ONNX file for QGIS
(export.py). Built on eval/'s inference; nothing below imports it."""
