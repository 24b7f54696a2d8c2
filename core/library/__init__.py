"""The photo library: embeddings of photos, objects and texts; the 2-D map; similar and text search."""
