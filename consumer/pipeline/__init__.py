"""The consumer's data path: the loop (``app``), one owner per polled record
(``work``), the job state (``jobstate``), the job run and the engine queue
(``jobs``, ``scheduler``), the outputs (``sinks``), one checkpoint
(``checkpoint``). The path in order is given once, in docs/architecture.md.
"""
