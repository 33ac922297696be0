"""Item -> grade; knows nothing of Kafka.

The prompt, the engine Protocol, vLLM and the fake, output validation, the
attempt flow, the model store and the factory that builds them.
"""
