"""The model cache: policy, locking, the process memory meter, housekeeping."""
