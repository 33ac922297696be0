"""The consumer's data path, in the order a record takes it.

fetch -> intake -> jobstate (ledger: what the request gets) -> admission -> jobs
-> scheduler -> results -> sinks (dead_letters, redelivery) -> offsets -> app -> service.
"""
