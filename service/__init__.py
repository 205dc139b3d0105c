"""Sibyl: TensorFlow inference jobs behind an Eve REST API, stored in MongoDB.

This package's face imports nothing: `service.app.create_app` builds the API,
and the worker, the model-inspection child and the data layer load without Eve.
"""
