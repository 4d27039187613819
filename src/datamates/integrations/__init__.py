"""Bridges to the pipelines users already run (docs/formats.md). Nothing here is imported by the
core: each module needs its own optional package (`datatrove`: pip install 'datamates[datatrove]')."""
