"""Storage: the backend Protocol, its backends and the decorators around them."""
