"""Training data: O1 records, BEIR preparation, array_record storage, formatting."""
