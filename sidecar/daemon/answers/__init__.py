"""Airflow's semantics: which secret names a key maps to, and what Airflow gets for them."""
