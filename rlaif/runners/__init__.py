"""What runs a stage's jobs: in this process, on a Ray cluster, and Prefect's server for the flows."""
