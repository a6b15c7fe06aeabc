"""The trainer: fits, calibrates and publishes autoencoder versions (`anomaly-trainer`)."""

import os

# TensorFlow's C++ start-up chatter ("WARNING: All log messages before absl::InitializeLog() ...",
# oneDNN notices, even some "E" lines) is noise for a command-line user. It is only read when
# TensorFlow is first imported, so it is set here, before any trainer module can import it;
# a value the user exported still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
