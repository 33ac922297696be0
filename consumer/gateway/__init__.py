"""The HTTP gateway: the prototype's API in front of the topics.

It produces requests and control commands and tails the progress topic; it
never imports ``consumer.engine`` or ``consumer.pipeline`` (no torch, no
vLLM in its process).
"""
