"""Helpers shared by the test suites, importable from any test file (``tests`` is on pytest's pythonpath):
``synth_data`` builds the synthetic buckets and stores, ``s3_data`` the byte-exact trees the fetch tests
upload, ``sample_data`` contract-shaped in-memory samples."""
