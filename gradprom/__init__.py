"""GradProm Platform: task-driven medical image enhancement with Gradient Promotion."""

__version__ = "0.1.0"
