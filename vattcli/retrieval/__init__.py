"""Retrieval indexes: the folder format (``store``), names under ``$VATT_HOME/indexes`` (``names``) and search,
exact or approximate (``index``). Below eval/, indexing/ and serve/, which build, fill and serve them."""
