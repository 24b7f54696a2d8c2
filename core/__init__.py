"""slopewatch core: types, taxonomy, datasets, detector, spatial reasoning, analysis."""

__version__ = "0.1.0"
