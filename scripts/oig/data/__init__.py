"""Stage 1, data: slice files, validation, training.yaml, fetching linked sources, the mixture.

Imports only the shared core (oig.errors, oig.records, oig.yamlsafe, oig.files, ...); never torch."""
