"""Models: the store and its versions, file sniffing and sandboxed inspection, signatures,
the TensorFlow runtime."""
