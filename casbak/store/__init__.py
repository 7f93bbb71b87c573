"""The content-addressed object store: backends, sealed objects, packs, indexes, keys."""
