"""What the trainer and the worker share: the model artifact and model directory, the model-topic
format and its Kafka I/O, Kafka connection settings, the record parser and the root error.

It imports neither ``trainer`` nor ``worker``; both import it.
"""
