"""Model build: pinned sources to models/out/ and its manifest (run `python -m models.build`)."""
