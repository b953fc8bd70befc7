"""Task packages: each registers its models with zoo.register on import."""
