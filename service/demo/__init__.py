"""The demo models (iris, digits) and the data they are trained on."""
