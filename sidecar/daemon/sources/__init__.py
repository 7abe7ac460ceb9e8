"""Secret stores: each fetches names from AWS and knows nothing of Airflow.

A source answers `get(name)` with the secret's string, or None when AWS says the name does not
exist or cannot be served as a string; any other failure raises `UpstreamError`. Its listing
gives, for each name, what moves when the secret changes (its version) and, where the listing
carries it, the value.

What every source gives, and the error it raises, are in `base` (no AWS client is imported
there); `configured` builds the one the settings name.
"""
