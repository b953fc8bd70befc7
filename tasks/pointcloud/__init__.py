"""pointcloud models, data adapters and evaluators (see the task's issue)."""
