"""The consumer's data path, in order.

intake -> scheduler -> jobs -> results -> sinks -> checkpointing -> app -> service.
"""
