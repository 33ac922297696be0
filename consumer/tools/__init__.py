"""The command line and the operator's tools.

submit/follow, verify, demo, offline grading, file formats, the embedded broker.
"""
