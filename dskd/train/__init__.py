"""Stage 5: student construction, losses, training data reader and the framework-free loop."""
