"""The cache in front of AWS (`cache.Cache`), and each part of a key's state under its owner:
the entry (`entry`), its failures (`backoff`), its fetch under way (`flight`), the store of
entries (`store`) and the refresh-ahead queue (`refresher`)."""
