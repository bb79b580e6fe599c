"""The standard documents (documents.md): field table, rules, canonical form, versions, serving.

Pure: imports nothing else of ours, performs no I/O. Submodules are imported directly
(``from agent.documents.fields import field_kind``) so a reader does not pay for the validator.
"""
