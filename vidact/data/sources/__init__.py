"""One module per dataset: annotations -> records (`common.SourceDataset`), and the one
registry of datasets that `vidact prepare <name>` is generated from (`registry.py`)."""
