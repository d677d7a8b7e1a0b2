"""The method's five phases, each a function of explicit inputs to an artifact directory.

tapt -> embeddings -> clustering -> cpt -> finetune. Every phase writes into a
temporary directory that is renamed into place when complete, with a
``record.json`` of what determined it (see :mod:`trainables.phases.artifacts`).
"""
